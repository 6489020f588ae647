-- Prefect's own database next to Compute Share's (the container's POSTGRES_DB).
-- Prefect's migrations create the pg_trgm extension in it.
CREATE DATABASE prefect OWNER cshare;
