//! The database's schema, versioned with SQLite's `user_version`: [`MIGRATIONS`] takes any older
//! database to the current version at open, in one transaction each, and a database newer than
//! this binary is refused rather than guessed at.

/// Schema migrations, in order: `MIGRATIONS[i]` takes version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: per-cgroup samples.
    "CREATE TABLE cgroup_samples (
        ts_ms INTEGER NOT NULL,
        cgroup_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        usage_bytes INTEGER NOT NULL,
        anon_bytes INTEGER NOT NULL,
        file_bytes INTEGER NOT NULL,
        active_file_bytes INTEGER NOT NULL,
        inactive_file_bytes INTEGER NOT NULL,
        working_set_bytes INTEGER NOT NULL,
        kernel_bytes INTEGER NOT NULL,
        limit_bytes INTEGER,
        held_bytes INTEGER,
        PRIMARY KEY (path, ts_ms)
    ) WITHOUT ROWID;
    CREATE INDEX cgroup_samples_by_time ON cgroup_samples (ts_ms);",
    // 2: lifecycle records (process exits, OOM kills, cgroups created and removed).
    "CREATE TABLE lifecycle (
        ts_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        pid INTEGER NOT NULL,
        comm TEXT NOT NULL,
        cgroup_id INTEGER NOT NULL,
        cgroup_path TEXT,
        exit_code INTEGER,
        signal INTEGER,
        oom_killed INTEGER NOT NULL,
        main_process INTEGER NOT NULL,
        anon_rss_bytes INTEGER,
        file_rss_bytes INTEGER,
        shmem_rss_bytes INTEGER,
        evidence TEXT,
        PRIMARY KEY (ts_ms, kind, pid, cgroup_id)
    ) WITHOUT ROWID;
    CREATE INDEX lifecycle_by_cgroup ON lifecycle (cgroup_path, ts_ms);",
    // 3: the event engine's events; one open event per kind and subject.
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        severity TEXT NOT NULL,
        status TEXT NOT NULL,
        summary TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        recovered_ms INTEGER,
        dimensions TEXT NOT NULL,
        evidence TEXT NOT NULL
    );
    CREATE UNIQUE INDEX events_one_open ON events (kind, subject) WHERE status = 'open';
    CREATE INDEX events_by_subject ON events (kind, subject, recovered_ms);",
    // 4: the cgroup's own OOM-kill counter (to find kills no victim event was seen for) and the
    // file with the most page cache, per sample.
    "ALTER TABLE cgroup_samples ADD COLUMN oom_kills INTEGER;
    ALTER TABLE cgroup_samples ADD COLUMN top_file TEXT;
    ALTER TABLE cgroup_samples ADD COLUMN top_file_bytes INTEGER;",
    // 5: finished allocator traces: their status and their symbolized answer, as JSON.
    "CREATE TABLE traces (
        id INTEGER PRIMARY KEY,
        finished_ms INTEGER NOT NULL,
        status TEXT NOT NULL,
        answer TEXT NOT NULL
    );",
    // 6: user stacks unwound from the kernel's stack copies, by the sampled-page record they
    // belong to (kept across restarts with the pinned records; their copies are gone).
    "CREATE TABLE user_stacks (
        hash INTEGER PRIMARY KEY,
        frames BLOB NOT NULL,
        stop TEXT
    );
    CREATE TABLE unwound_slots (
        superblock INTEGER PRIMARY KEY,
        pid INTEGER NOT NULL,
        ts_ns INTEGER NOT NULL,
        hash INTEGER NOT NULL
    );",
    // 7: saved stacks under keys the agent gives (growing, so a new stack is appended) instead
    // of their hash (a random place in the table each: 450 ms a minute on a busy node); the
    // stacks saved so far keep their place in hash order.
    "CREATE TABLE unwound_stacks (
        id INTEGER PRIMARY KEY,
        frames BLOB NOT NULL,
        stop TEXT
    );
    INSERT INTO unwound_stacks (id, frames, stop)
        SELECT row_number() OVER (ORDER BY hash), frames, stop FROM user_stacks;
    CREATE TABLE unwound_slots_7 (
        superblock INTEGER PRIMARY KEY,
        pid INTEGER NOT NULL,
        ts_ns INTEGER NOT NULL,
        stack INTEGER NOT NULL
    );
    INSERT INTO unwound_slots_7 (superblock, pid, ts_ns, stack)
        SELECT s.superblock, s.pid, s.ts_ns, k.id
        FROM unwound_slots s
        JOIN (SELECT hash, row_number() OVER (ORDER BY hash) AS id FROM user_stacks) k
            ON k.hash = s.hash;
    DROP TABLE unwound_slots;
    DROP TABLE user_stacks;
    ALTER TABLE unwound_slots_7 RENAME TO unwound_slots;",
    // 8: the Python frames (function, file, line) unwound stacks refer to by id.
    "CREATE TABLE python_frames (
        id INTEGER PRIMARY KEY,
        function TEXT NOT NULL,
        file TEXT NOT NULL,
        line INTEGER NOT NULL
    );",
    // 9: the kernel's reclaim counters, for the engine to tell reclaim that keeps up from
    // reclaim that does not.
    "ALTER TABLE cgroup_samples ADD COLUMN limit_hits INTEGER;
    ALTER TABLE cgroup_samples ADD COLUMN high_events INTEGER;
    ALTER TABLE cgroup_samples ADD COLUMN refaulted_bytes INTEGER;",
];
