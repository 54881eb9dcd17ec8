-- Which job file owns each job name, so that two job files that share a `name` never share one
-- state (the second would take the first's watermark). Keep in step with migrations/postgres/.
CREATE TABLE jobs (
    job        TEXT PRIMARY KEY,
    file       TEXT NOT NULL,                     -- the job file's absolute path
    host       TEXT NOT NULL,                     -- the machine it was run on
    updated_at TEXT NOT NULL
);
