CREATE TABLE natspubsub_inbox (
    consumer VARCHAR(255) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    event_id VARCHAR(255) NOT NULL,
    processed_at DATETIME NOT NULL,
    PRIMARY KEY (consumer, topic, event_id)
);

CREATE INDEX ix_natspubsub_inbox_processed_at ON natspubsub_inbox (processed_at);

CREATE TABLE natspubsub_outbox (
    id INTEGER NOT NULL,
    event_id VARCHAR(255) NOT NULL,
    stream VARCHAR(255) NOT NULL,
    subject VARCHAR(512) NOT NULL,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL,
    status VARCHAR(16) DEFAULT 'pending' NOT NULL,
    attempts INTEGER DEFAULT 0 NOT NULL,
    available_at FLOAT DEFAULT 0 NOT NULL,
    lease_owner VARCHAR(64),
    last_error TEXT,
    created_at DATETIME NOT NULL,
    published_at DATETIME,
    PRIMARY KEY (id)
);

CREATE INDEX ix_natspubsub_outbox_claim ON natspubsub_outbox (stream, status, id);

CREATE INDEX ix_natspubsub_outbox_event_id ON natspubsub_outbox (event_id);

CREATE INDEX ix_natspubsub_outbox_published_at ON natspubsub_outbox (published_at);
