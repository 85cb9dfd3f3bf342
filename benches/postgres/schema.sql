-- The incumbent design: killmails and their participants in tables, statistics in materialized
-- views refreshed on a schedule. Used by benches/e2e.sh as the PostgreSQL baseline.
CREATE TABLE killmails (
    killmail_id     bigint PRIMARY KEY,
    killmail_time   timestamptz NOT NULL,
    solar_system_id integer NOT NULL,
    total_value     numeric(20, 2),          -- zkb.totalValue (ISK)
    points          integer,                 -- zkb.points
    npc             boolean NOT NULL,
    solo            boolean                  -- zkb.solo; NULL when unknown
);
CREATE INDEX killmails_time ON killmails (killmail_time);

-- One row per attacker and one for the victim.
CREATE TABLE participants (
    killmail_id    bigint NOT NULL REFERENCES killmails (killmail_id),
    is_victim      boolean NOT NULL,
    character_id   bigint,
    corporation_id bigint,
    alliance_id    bigint,
    ship_type_id   integer,
    final_blow     boolean NOT NULL,
    damage         integer NOT NULL           -- damage_done (attacker) or damage_taken (victim)
);
CREATE INDEX participants_killmail ON participants (killmail_id);
CREATE INDEX participants_character ON participants (character_id);
CREATE INDEX participants_corporation ON participants (corporation_id);
CREATE INDEX participants_alliance ON participants (alliance_id);

-- Raw JSON as received, one killmail per row, before it is shredded into the tables.
CREATE UNLOGGED TABLE staging (doc jsonb NOT NULL);
