-- Shreds the staged JSON into killmails and participants. A killmail id already loaded is
-- skipped (with its participants), so a replayed killmail never counts twice.
BEGIN;
WITH new AS (
    INSERT INTO killmails
    SELECT DISTINCT ON ((doc->>'killmail_id')::bigint)
           (doc->>'killmail_id')::bigint,
           (doc->>'killmail_time')::timestamptz,
           (doc->>'solar_system_id')::integer,
           round((doc->'zkb'->>'totalValue')::numeric, 2),
           (doc->'zkb'->>'points')::integer,
           coalesce((doc->'zkb'->>'npc')::boolean,
                    NOT EXISTS (SELECT 1 FROM jsonb_array_elements(doc->'attackers') a
                                WHERE (a->>'character_id')::bigint >= 4000000)),
           (doc->'zkb'->>'solo')::boolean
    FROM staging
    ORDER BY (doc->>'killmail_id')::bigint
    ON CONFLICT (killmail_id) DO NOTHING
    RETURNING killmail_id
), docs AS (
    SELECT DISTINCT ON (s.doc->>'killmail_id') s.doc
    FROM staging s JOIN new ON new.killmail_id = (s.doc->>'killmail_id')::bigint
)
INSERT INTO participants
SELECT (doc->>'killmail_id')::bigint, false,
       (a->>'character_id')::bigint, (a->>'corporation_id')::bigint, (a->>'alliance_id')::bigint,
       (a->>'ship_type_id')::integer, coalesce((a->>'final_blow')::boolean, false),
       coalesce((a->>'damage_done')::integer, 0)
FROM docs, jsonb_array_elements(doc->'attackers') a
UNION ALL
SELECT (doc->>'killmail_id')::bigint, true,
       (doc->'victim'->>'character_id')::bigint, (doc->'victim'->>'corporation_id')::bigint,
       (doc->'victim'->>'alliance_id')::bigint, (doc->'victim'->>'ship_type_id')::integer, false,
       coalesce((doc->'victim'->>'damage_taken')::integer, 0)
FROM docs;
TRUNCATE staging;
COMMIT;
