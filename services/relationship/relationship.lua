--[[
Relationship service state. Every function touches the keys of one person's hash slot
({p:<person_id>}), so each is one atomic step that also works on Redis Cluster.

Per person P (prefix rel:{p:P}):
  :seen        hash  input id -> "<fingerprint>|<result json>"  (exactly-once effect)
  :enrollment  hash  insurance_type, region, status
  :kinship     hash  relative id -> what the relative is to P
  :rels        hash  recipient id -> json {state = pending|active, kinship, recipient_region, since}
  :incoming    set   providers with a pending or active relationship to P
`remembered` and `remember` come from shared/prelude.lua, loaded in front of this file.
]]

-- KEYS: seen, rels   ARGV: input_id, fingerprint, action, recipient_id, refusal ('' when none),
--                          kinship, recipient_region, now
local function relationship_command(keys, args)
  local prior = remembered(keys[1], args[1], args[2])
  if prior then return prior end
  local action, recipient, refusal, now = args[3], args[4], args[5], args[8]
  local current = redis.call('HGET', keys[2], recipient)
  current = current and cjson.decode(current) or nil
  local result = {at = now, index = ''}
  if refusal ~= '' then
    result.type, result.reason = 'rejected', refusal
  elseif action == 'request' then
    if current then
      result.type, result.reason = 'rejected', 'DUPLICATE_RELATIONSHIP'
    else
      current = {state = 'pending', kinship = args[6], recipient_region = args[7], since = now}
      redis.call('HSET', keys[2], recipient, cjson.encode(current))
      result.type, result.index = 'requested', 'add'
    end
  elseif not current or (action ~= 'dissolve' and current.state ~= 'pending') then
    result.type, result.reason = 'rejected', 'RELATIONSHIP_NOT_ACTIVE'
  elseif action == 'accept' then
    current.state, current.since = 'active', now
    redis.call('HSET', keys[2], recipient, cjson.encode(current))
    result.type = 'established'
  else
    redis.call('HDEL', keys[2], recipient)
    result.type, result.index = (action == 'decline') and 'declined' or 'dissolved', 'remove'
  end
  if current then
    result.kinship, result.recipient_region = current.kinship, current.recipient_region
  end
  return remember(keys[1], args[1], args[2], result)
end

-- Rule 7. KEYS: seen, enrollment, rels, incoming
-- ARGV: input_id, fingerprint, insurance_type, region, status, now
-- Ends every relationship where the person is the provider (here) and returns the providers
-- whose relationships to the person the caller must end in their own slots.
local function record_enrollment(keys, args)
  local prior = remembered(keys[1], args[1], args[2])
  if prior then return prior end
  local before = redis.call('HMGET', keys[2], 'insurance_type', 'region', 'status')
  redis.call('HSET', keys[2], 'insurance_type', args[3], 'region', args[4], 'status', args[5])
  local result = {at = args[6], changed = false, ended_as_provider = {}, providers = {}}
  if before[1] and (before[1] ~= args[3] or before[2] ~= args[4] or before[3] ~= args[5]) then
    result.changed = true
    local rels = redis.call('HGETALL', keys[3])
    for i = 1, #rels, 2 do
      local rel = cjson.decode(rels[i + 1])
      table.insert(result.ended_as_provider,
        {recipient_id = rels[i], kinship = rel.kinship, recipient_region = rel.recipient_region})
    end
    result.providers = redis.call('SMEMBERS', keys[4])
    redis.call('DEL', keys[3], keys[4])
  end
  -- cjson encodes an empty table as an object; the caller reads both as "none".
  return remember(keys[1], args[1], args[2], result)
end

-- KEYS: seen, rels (of the provider)   ARGV: input_id, fingerprint, recipient_id, now
local function end_relationship(keys, args)
  local prior = remembered(keys[1], args[1], args[2])
  if prior then return prior end
  local current = redis.call('HGET', keys[2], args[3])
  local result = {at = args[4], ended = false}
  if current then
    current = cjson.decode(current)
    redis.call('HDEL', keys[2], args[3])
    result.ended, result.kinship, result.recipient_region = true, current.kinship, current.recipient_region
  end
  return remember(keys[1], args[1], args[2], result)
end

-- KEYS: seen, kinship   ARGV: input_id, fingerprint, relative_id, kinship
local function record_kinship(keys, args)
  local prior = remembered(keys[1], args[1], args[2])
  if prior then return prior end
  redis.call('HSET', keys[2], args[3], args[4])
  return remember(keys[1], args[1], args[2], {})
end

redis.register_function('relationship_command', relationship_command)
redis.register_function('relationship_record_enrollment', record_enrollment)
redis.register_function('relationship_end', end_relationship)
redis.register_function('relationship_record_kinship', record_kinship)
