-- The statistics kmflow serves, as materialized views over killmails and participants, with
-- the same rules (benches/e2e.sh checks a sample against kmflow and the floor): a killmail
-- counts once per entity however many of its rows carry it; an entity both attacker and victim
-- gets a kill and a loss; NPC killmails count only as npc_losses and in involved/first/last seen.
-- Refreshed with REFRESH MATERIALIZED VIEW (the unique indexes also allow CONCURRENTLY).

CREATE MATERIALIZED VIEW character_activity_summary AS
WITH share AS (
        SELECT p.character_id, p.killmail_id,
               bool_or(NOT p.is_victim) AS att, bool_or(p.is_victim) AS vic,
               bool_or(p.final_blow AND NOT p.is_victim) AS fb,
               coalesce(sum(p.damage) FILTER (WHERE NOT p.is_victim), 0) AS dmg_done,
               coalesce(sum(p.damage) FILTER (WHERE p.is_victim), 0) AS dmg_taken
        FROM participants p
        WHERE p.character_id IS NOT NULL
        GROUP BY p.character_id, p.killmail_id
)
SELECT character_id,
       count(*) AS involved,
       count(*) FILTER (WHERE att AND NOT k.npc) AS kills,
       count(*) FILTER (WHERE vic AND NOT k.npc) AS losses,
       count(*) FILTER (WHERE vic AND k.npc) AS npc_losses,
       count(*) FILTER (WHERE fb AND NOT k.npc) AS final_blows,
       coalesce(sum(dmg_done) FILTER (WHERE NOT k.npc), 0) AS damage_done,
       coalesce(sum(dmg_taken) FILTER (WHERE NOT k.npc), 0) AS damage_taken,
       coalesce(sum(k.total_value) FILTER (WHERE att AND NOT k.npc), 0) AS isk_destroyed,
       coalesce(sum(k.total_value) FILTER (WHERE vic AND NOT k.npc), 0) AS isk_lost,
       coalesce(sum(k.points) FILTER (WHERE att AND NOT k.npc), 0) AS points_destroyed,
       coalesce(sum(k.points) FILTER (WHERE vic AND NOT k.npc), 0) AS points_lost,
       count(*) FILTER (WHERE att AND NOT k.npc AND k.solo) AS solo_kills,
       count(*) FILTER (WHERE vic AND NOT k.npc AND k.solo) AS solo_losses,
       min(k.killmail_time) AS first_seen,
       max(k.killmail_time) AS last_seen
FROM share JOIN killmails k USING (killmail_id)
GROUP BY character_id;

CREATE UNIQUE INDEX ON character_activity_summary (character_id);

CREATE MATERIALIZED VIEW corporation_activity_summary AS
WITH share AS (
        SELECT p.corporation_id, p.killmail_id,
               bool_or(NOT p.is_victim) AS att, bool_or(p.is_victim) AS vic,
               bool_or(p.final_blow AND NOT p.is_victim) AS fb,
               coalesce(sum(p.damage) FILTER (WHERE NOT p.is_victim), 0) AS dmg_done,
               coalesce(sum(p.damage) FILTER (WHERE p.is_victim), 0) AS dmg_taken
        FROM participants p
        WHERE p.corporation_id IS NOT NULL
        GROUP BY p.corporation_id, p.killmail_id
)
SELECT corporation_id,
       count(*) AS involved,
       count(*) FILTER (WHERE att AND NOT k.npc) AS kills,
       count(*) FILTER (WHERE vic AND NOT k.npc) AS losses,
       count(*) FILTER (WHERE vic AND k.npc) AS npc_losses,
       count(*) FILTER (WHERE fb AND NOT k.npc) AS final_blows,
       coalesce(sum(dmg_done) FILTER (WHERE NOT k.npc), 0) AS damage_done,
       coalesce(sum(dmg_taken) FILTER (WHERE NOT k.npc), 0) AS damage_taken,
       coalesce(sum(k.total_value) FILTER (WHERE att AND NOT k.npc), 0) AS isk_destroyed,
       coalesce(sum(k.total_value) FILTER (WHERE vic AND NOT k.npc), 0) AS isk_lost,
       coalesce(sum(k.points) FILTER (WHERE att AND NOT k.npc), 0) AS points_destroyed,
       coalesce(sum(k.points) FILTER (WHERE vic AND NOT k.npc), 0) AS points_lost,
       count(*) FILTER (WHERE att AND NOT k.npc AND k.solo) AS solo_kills,
       count(*) FILTER (WHERE vic AND NOT k.npc AND k.solo) AS solo_losses,
       min(k.killmail_time) AS first_seen,
       max(k.killmail_time) AS last_seen
FROM share JOIN killmails k USING (killmail_id)
GROUP BY corporation_id;

CREATE UNIQUE INDEX ON corporation_activity_summary (corporation_id);

-- Rosters: a character counts under the corporation named on its own row.

CREATE MATERIALIZED VIEW corporation_member_summary AS
WITH share AS (
        SELECT p.corporation_id, p.character_id, p.killmail_id,
               bool_or(NOT p.is_victim) AS att, bool_or(p.is_victim) AS vic,
               bool_or(p.final_blow AND NOT p.is_victim) AS fb,
               coalesce(sum(p.damage) FILTER (WHERE NOT p.is_victim), 0) AS dmg_done,
               coalesce(sum(p.damage) FILTER (WHERE p.is_victim), 0) AS dmg_taken
        FROM participants p
        WHERE p.corporation_id IS NOT NULL AND p.character_id IS NOT NULL
        GROUP BY p.corporation_id, p.character_id, p.killmail_id
)
SELECT corporation_id, character_id,
       count(*) AS involved,
       count(*) FILTER (WHERE att AND NOT k.npc) AS kills,
       count(*) FILTER (WHERE vic AND NOT k.npc) AS losses,
       count(*) FILTER (WHERE vic AND k.npc) AS npc_losses,
       count(*) FILTER (WHERE fb AND NOT k.npc) AS final_blows,
       coalesce(sum(dmg_done) FILTER (WHERE NOT k.npc), 0) AS damage_done,
       coalesce(sum(dmg_taken) FILTER (WHERE NOT k.npc), 0) AS damage_taken,
       coalesce(sum(k.total_value) FILTER (WHERE att AND NOT k.npc), 0) AS isk_destroyed,
       coalesce(sum(k.total_value) FILTER (WHERE vic AND NOT k.npc), 0) AS isk_lost,
       coalesce(sum(k.points) FILTER (WHERE att AND NOT k.npc), 0) AS points_destroyed,
       coalesce(sum(k.points) FILTER (WHERE vic AND NOT k.npc), 0) AS points_lost,
       count(*) FILTER (WHERE att AND NOT k.npc AND k.solo) AS solo_kills,
       count(*) FILTER (WHERE vic AND NOT k.npc AND k.solo) AS solo_losses,
       min(k.killmail_time) AS first_seen,
       max(k.killmail_time) AS last_seen
FROM share JOIN killmails k USING (killmail_id)
GROUP BY corporation_id, character_id;

CREATE UNIQUE INDEX ON corporation_member_summary (corporation_id, character_id);
