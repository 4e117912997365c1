-- The node id the coordinator reported (from this node's certificate), remembered so the camera
-- can key metric windows while the coordinator is away.
CREATE TABLE node_identity (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    node_id    TEXT    NOT NULL,
    updated_at INTEGER NOT NULL -- unix ms
);
