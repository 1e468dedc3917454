-- Runs once, when the compose `postgres` volume is created (docker-entrypoint-initdb.d), as
-- POSTGRES_USER in the database POSTGRES_DB (which holds the Dagster instance).
-- One database per concern, so each can be backed up, restored or moved on its own.
create database medallion_webhooks;  -- webhook inbox (MEDALLION_WEBHOOK_INBOX_URL)
create database medallion_crm;       -- reverse ETL target (MEDALLION_REVERSE_ETL_URL)
