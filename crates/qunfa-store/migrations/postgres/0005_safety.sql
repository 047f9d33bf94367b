-- Content safety: the human review queue. A row is opened when a send is
-- held for review by the content check (in the transaction that holds it) and
-- decided when the broadcast is approved or rejected (in that transaction).
-- Decided rows are the training examples of the risk model.
CREATE TABLE safety_reviews (
    id BIGSERIAL PRIMARY KEY,
    workspace_id BIGINT NOT NULL,
    broadcast_id BIGINT NOT NULL,
    text TEXT NOT NULL,
    hits TEXT NOT NULL,
    risk DOUBLE PRECISION NOT NULL,
    sampled BIGINT NOT NULL DEFAULT 0,
    lexicon_version TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    reason TEXT NOT NULL DEFAULT '',
    decided_by TEXT,
    decided_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX safety_reviews_queue ON safety_reviews(workspace_id, state, id);
CREATE INDEX safety_reviews_broadcast ON safety_reviews(broadcast_id);

-- Near-duplicate counting: one row per dispatched broadcast (written in the
-- dispatch transaction) with the SimHash of its text and the perceptual hash
-- of its image, read back over a sliding window per sender.
CREATE TABLE content_fingerprints (
    id BIGSERIAL PRIMARY KEY,
    workspace_id BIGINT NOT NULL,
    member_id BIGINT NOT NULL,
    broadcast_id BIGINT NOT NULL,
    simhash BIGINT,
    image_hash BIGINT,
    n_recipients BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX content_fingerprints_sender ON content_fingerprints(workspace_id, member_id, created_at);

-- Secondary verification: a one-time code an admin issues for one broadcast;
-- only its SHA-256 is stored.
CREATE TABLE verification_codes (
    id BIGSERIAL PRIMARY KEY,
    workspace_id BIGINT NOT NULL,
    broadcast_id BIGINT NOT NULL,
    code_hash TEXT NOT NULL,
    issued_by TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX verification_codes_broadcast ON verification_codes(broadcast_id);

ALTER TABLE media ADD COLUMN image_hash BIGINT;

-- Words and allow phrases added to the word library through the API (server
-- admin), on top of the files. Every change bumps the server setting
-- safety_words_version, which every node follows to rebuild its library.
CREATE TABLE safety_words (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    category TEXT NOT NULL,
    word TEXT NOT NULL,
    severity TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (kind, category, word)
);

-- Link domains a workspace has sent before (registrable domains, written in
-- the dispatch transaction); a domain not in here is "first seen".
CREATE TABLE seen_domains (
    workspace_id BIGINT NOT NULL,
    domain TEXT NOT NULL,
    first_seen_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, domain)
);
