-- What an administrator (a superuser) runs once in the API's database, so that the API can run as a role that is not
-- a superuser. Safe to run again.
--
--   psql -d DATABASE -v role=asyncormapi -f script/sql/grant.sql
--
-- role defaults to asyncormapi; publication to asyncormapi_changes (ChangeFeed:Publication). The server needs
-- wal_level = logical for GET /a/changes (docs/deploy.md). Give the role a password with \password or ALTER ROLE.
\set ON_ERROR_STOP on
\if :{?role}
\else
  \set role asyncormapi
\endif
\if :{?publication}
\else
  \set publication asyncormapi_changes
\endif

-- LOGIN for the API; REPLICATION for GET /a/changes (a logical replication connection, and its temporary slot).
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I REPLICATION', :'role') \gexec

-- POST /reset drops and creates a and b: CREATE on public, and the tables (with their sequences) the role's own.
SELECT format('GRANT USAGE, CREATE ON SCHEMA public TO %I', :'role') \gexec
SELECT format('ALTER TABLE %s OWNER TO %I', t, :'role') FROM unnest(ARRAY['public.b', 'public.a']) AS t
WHERE to_regclass(t) IS NOT NULL \gexec

-- The API's own schema, for its idempotency keys: never public.
SELECT format('CREATE SCHEMA IF NOT EXISTS asyncormapi AUTHORIZATION %I', :'role') \gexec
SELECT format('ALTER SCHEMA asyncormapi OWNER TO %I', :'role') \gexec

-- The change feed's publication. FOR TABLES IN SCHEMA needs a superuser, and keeps a and b in it across resets.
SELECT format('CREATE PUBLICATION %I FOR TABLES IN SCHEMA public', :'publication')
WHERE NOT EXISTS (SELECT FROM pg_publication WHERE pubname = :'publication') \gexec
