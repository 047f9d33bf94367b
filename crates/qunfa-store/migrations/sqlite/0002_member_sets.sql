-- Tag and department membership as roaring bitmaps, one row per set and
-- 65,536-contact chunk (see src/members.rs). The rows of contact_tags and
-- contact_departments are moved by the migration code, which then drops them.
ALTER TABLE workspaces ADD COLUMN members_version INTEGER NOT NULL DEFAULT 0;
CREATE TABLE member_sets (
    workspace_id INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    set_id INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    cardinality INTEGER NOT NULL,
    bits BLOB NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, kind, set_id, chunk)
) WITHOUT ROWID;
CREATE INDEX member_sets_chunk ON member_sets(workspace_id, kind, chunk);
CREATE INDEX member_sets_version ON member_sets(workspace_id, version);
-- The audience index follows changes by version: every transaction that
-- writes contacts bumps contacts_version and stamps the rows it writes.
ALTER TABLE workspaces ADD COLUMN contacts_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE contacts ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
CREATE INDEX contacts_version ON contacts(workspace_id, version);
-- Saved segments: named audience expressions, evaluated when used.
CREATE TABLE segments (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    name TEXT NOT NULL,
    expr TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX segments_name ON segments(workspace_id, name);
