-- When each provider is rescanned on its own (a cron expression) and whether in real time.
ALTER TABLE providers ADD COLUMN scan_schedule TEXT;
ALTER TABLE providers ADD COLUMN realtime BOOLEAN NOT NULL DEFAULT FALSE;
