--[[
Relationship service state: every key and stored record is described in docs/state.md. Each function
touches the keys of one hash slot, so each is one atomic step, on Redis or on a Redis Cluster. Its
KEYS and ARGV are declared once, by name, in this service's store.py; it unpacks them into locals
of the same names (tests/unit/test_redis_functions.py holds the two together). `remembered` and
`remember` come from shared/prelude.lua, loaded in front of this file.
]]

local function version_of(indexed)
  return tonumber(string.match(indexed, '^%d+'))
end

-- All keys are the provider's. `refusal`: '' when none; `recipient_generation` and
-- `provider_generation`: as the decision read them; `version`: of the pending request an accept
-- was decided on.
local function relationship_command(keys, args)
  local seen_key, earlier_seen_key, rels_key, versions_key, enrollment_key, generations_key = unpack(keys)
  local input_id, fingerprint, seen_generation_ms, now_ms, seen_kept_ms, outside_window, action, recipient,
        refusal, kinship, recipient_region, recipient_generation, provider_generation, version, now = unpack(args)
  local seen = seen_ids(seen_key, earlier_seen_key, seen_generation_ms, now_ms, seen_kept_ms, outside_window)
  local prior = remembered(seen, input_id, fingerprint)
  if prior then return prior end
  local current = redis.call('HGET', rels_key, recipient)
  current = current and cjson.decode(current) or nil
  local as_decided = current and current.state == 'pending' and
    tonumber(redis.call('HGET', versions_key, recipient) or '0') == tonumber(version)
  local result = {at = now}
  local function changed(state)
    result.version, result.state = redis.call('HINCRBY', versions_key, recipient, 1), state
  end
  if refusal ~= '' then
    result.type, result.reason = 'rejected', refusal
    if action == 'accept' and refusal == 'INSURANCE_CHANGED' and as_decided then
      -- The recipient's insurance changed after the request, unseen by rule 7 (a race): it ends now.
      redis.call('HDEL', rels_key, recipient)
      changed('ended')
    end
  elseif (action == 'request' or action == 'accept') and
      tonumber(redis.call('HGET', enrollment_key, 'generation') or '0') ~= tonumber(provider_generation) then
    -- The provider's insurance changed after the decision read it: the decision is stale.
    result.type, result.reason = 'rejected', 'INSURANCE_CHANGED'
  elseif action == 'request' and
      tonumber(redis.call('HGET', generations_key, recipient) or '0') > tonumber(recipient_generation) then
    -- The recipient's insurance changed after the decision read it, and rule 7 already came by
    -- here (finding no request to end): stored now, the request would outlive the change.
    result.type, result.reason = 'rejected', 'INSURANCE_CHANGED'
  elseif action == 'request' then
    if current then
      result.type, result.reason = 'rejected', 'DUPLICATE_RELATIONSHIP'
    else
      current = {state = 'pending', kinship = kinship, recipient_region = recipient_region,
                 recipient_generation = tonumber(recipient_generation), since = now}
      redis.call('HSET', rels_key, recipient, cjson.encode(current))
      result.type = 'requested'
      changed('pending')
    end
  elseif not current or (action == 'accept' and not as_decided) or
      (action == 'decline' and current.state ~= 'pending') then
    result.type, result.reason = 'rejected', 'RELATIONSHIP_NOT_ACTIVE'
  elseif action == 'accept' then
    current.state, current.since = 'active', now
    redis.call('HSET', rels_key, recipient, cjson.encode(current))
    result.type = 'established'
    changed('active')
  else
    redis.call('HDEL', rels_key, recipient)
    result.type = (action == 'decline') and 'declined' or 'dissolved'
    changed('ended')
  end
  if current then
    result.kinship, result.recipient_region = current.kinship, current.recipient_region
  end
  return remember(seen, input_id, fingerprint, result)
end

-- Rule 7, all keys the person's. Ends every relationship where the person is the provider (here)
-- and returns the providers whose relationships to the person the caller must end in their own
-- slots, with the generation the person's enrollment reached.
local function record_enrollment(keys, args)
  local seen_key, earlier_seen_key, enrollment_key, rels_key, versions_key, providers_key = unpack(keys)
  local input_id, fingerprint, seen_generation_ms, now_ms, seen_kept_ms, outside_window, insurance_type,
        region, status, now = unpack(args)
  local seen = seen_ids(seen_key, earlier_seen_key, seen_generation_ms, now_ms, seen_kept_ms, outside_window)
  local prior = remembered(seen, input_id, fingerprint)
  if prior then return prior end
  local before = redis.call('HMGET', enrollment_key, 'insurance_type', 'region', 'status')
  local result = {at = now, changed = false, ended_as_provider = {}, providers = {}}
  if before[1] ~= insurance_type or before[2] ~= region or before[3] ~= status then
    result.generation = redis.call('HINCRBY', enrollment_key, 'generation', 1)
    redis.call('HSET', enrollment_key, 'insurance_type', insurance_type, 'region', region, 'status', status)
  end
  if before[1] and result.generation then
    result.changed = true
    local rels = redis.call('HGETALL', rels_key)
    for i = 1, #rels, 2 do
      local rel = cjson.decode(rels[i + 1])
      table.insert(result.ended_as_provider, {recipient_id = rels[i], kinship = rel.kinship,
        recipient_region = rel.recipient_region, version = redis.call('HINCRBY', versions_key, rels[i], 1)})
    end
    redis.call('DEL', rels_key)
    local providers = redis.call('HGETALL', providers_key)
    for i = 1, #providers, 2 do
      if not string.find(providers[i + 1], '|ended', 1, true) then
        table.insert(result.providers, providers[i])
      end
    end
  end
  -- cjson encodes an empty table as an object; the caller reads both as "none".
  return remember(seen, input_id, fingerprint, result)
end

-- Rule 7 from the recipient's side, in the provider's slot (all keys the provider's): the
-- recipient's enrollment reached `generation`. Ends the relationship if it was requested on an
-- earlier generation; one requested since knew the change and stays. Once per (recipient,
-- generation), however often it is asked. It also records the generation reached, so that a
-- request decided on an earlier one, whose step comes after this, is refused
-- (relationship_command): a change at any moment reaches it.
local function end_relationship(keys, args)
  local seen_key, earlier_seen_key, rels_key, versions_key, generations_key = unpack(keys)
  local recipient, generation, seen_generation_ms, now_ms, seen_kept_ms, outside_window = unpack(args)
  -- Only ever raised, so asking again (or late, for an older generation) changes nothing.
  if tonumber(redis.call('HGET', generations_key, recipient) or '0') < tonumber(generation) then
    redis.call('HSET', generations_key, recipient, generation)
  end
  local record = recipient .. '|' .. generation
  local seen = seen_ids(seen_key, earlier_seen_key, seen_generation_ms, now_ms, seen_kept_ms, outside_window)
  local prior = remembered(seen, record, '-')
  if prior then return prior end
  local current = redis.call('HGET', rels_key, recipient)
  local result = {ended = false}
  if current then
    current = cjson.decode(current)
    if current.recipient_generation < tonumber(generation) then
      redis.call('HDEL', rels_key, recipient)
      result.ended, result.kinship, result.recipient_region = true, current.kinship, current.recipient_region
      result.version = redis.call('HINCRBY', versions_key, recipient, 1)
    end
  end
  return remember(seen, record, '-', result)
end

local function record_kinship(keys, args)
  local seen_key, earlier_seen_key, kinship_key = unpack(keys)
  local input_id, fingerprint, seen_generation_ms, now_ms, seen_kept_ms, outside_window, relative,
        kinship = unpack(args)
  local seen = seen_ids(seen_key, earlier_seen_key, seen_generation_ms, now_ms, seen_kept_ms, outside_window)
  local prior = remembered(seen, input_id, fingerprint)
  if prior then return prior end
  redis.call('HSET', kinship_key, relative, kinship)
  return remember(seen, input_id, fingerprint, {})
end

-- The recipient's index after a change of the pair (provider, recipient). It applies only if it is
-- newer than what the index holds: a replayed, older update does nothing, while one lost in a
-- crash is made by the redelivery.
local function index_provider(keys, args)
  local providers_key = unpack(keys)
  local provider, version, state = unpack(args)
  local held = redis.call('HGET', providers_key, provider)
  if held and version_of(held) >= tonumber(version) then return 0 end
  redis.call('HSET', providers_key, provider, version .. '|' .. state)
  return 1
end

-- Before a request reads the recipient's enrollment it is decided on: the recipient's index names
-- the provider as live, so that a change of the recipient's insurance from now on reaches the
-- provider's slot (rule 7, relationship_end), before or after the request's step. The version
-- stays: the request's own update, newer, replaces it.
local function expect_provider(keys, args)
  local providers_key = unpack(keys)
  local provider = unpack(args)
  local held = redis.call('HGET', providers_key, provider)
  if not held then
    redis.call('HSET', providers_key, provider, '0|requesting')
  elseif string.find(held, '|ended', 1, true) then
    redis.call('HSET', providers_key, provider, version_of(held) .. '|requesting')
  end
  return 0
end

register('relationship_command', relationship_command)
register('relationship_record_enrollment', record_enrollment)
register('relationship_end', end_relationship)
register('relationship_record_kinship', record_kinship)
register('relationship_index_provider', index_provider)
register('relationship_expect_provider', expect_provider)
