-- Engagement sets (issue 9, docs/measurement.md): per broadcast, channel and
-- metric, the recipients (dense contact ids) it holds, as roaring bitmaps in
-- 65,536-id chunks like member_sets. A segment report intersects them with
-- the segment instead of scanning the broadcast's delivery records. The
-- migration's code builds the sets of every existing broadcast from its records.
-- metric: delivered | failed | not_sent (delivery state classes), opened,
-- opened_hour (bucket = hour since the epoch of the first open), replied,
-- forwarded, clicked, converted, read_timed, read_hist (bucket = histogram
-- bucket), read_ms_bit (bucket = bit k of the recipient's reading time).
CREATE TABLE measure_sets (
    broadcast_id BIGINT NOT NULL,
    channel TEXT NOT NULL,
    metric TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    chunk BIGINT NOT NULL,
    cardinality BIGINT NOT NULL,
    bits BYTEA NOT NULL,
    PRIMARY KEY (broadcast_id, channel, metric, bucket, chunk)
);
