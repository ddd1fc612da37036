--[[
Loaded in front of every service's Redis Functions library.

Exactly-once effect:
A function first asks `remembered`: an input id seen before with the same fingerprint returns
{"duplicate", stored result}, with another fingerprint {"conflict", ""}; then it applies its
effect and `remember`s the result in the same atomic step, returning {"applied", result}.
]]

-- Registers `fn` under this release's name (LIBRARY_VERSION is set by the loader, see
-- shared/redis_functions.py): two releases running side by side each call their own functions.
local function register(name, fn)
  redis.register_function(name .. '_v' .. LIBRARY_VERSION, fn)
end

-- A service asks this, not FUNCTION LIST (which would show it every library's code), whether its
-- release's library is loaded: the name carries the release's version.
redis.register_function{function_name = 'library_loaded_v' .. LIBRARY_VERSION, callback = function() return 1 end,
                        flags = {'no-writes'}}

local function remembered(seen_key, input_id, fingerprint)
  local prior = redis.call('HGET', seen_key, input_id)
  if not prior then return nil end
  local bar = string.find(prior, '|', 1, true)
  if string.sub(prior, 1, bar - 1) ~= fingerprint then return {'conflict', ''} end
  return {'duplicate', string.sub(prior, bar + 1)}
end

local function remember(seen_key, input_id, fingerprint, result)
  local encoded = cjson.encode(result)
  redis.call('HSET', seen_key, input_id, fingerprint .. '|' .. encoded)
  return {'applied', encoded}
end

-- A service's own copy of a person's enrollment (each service keeps its own; none reads another's).
local function record_enrollment_copy(keys, args)
  local seen_key, enrollment_key = unpack(keys)
  local input_id, fingerprint, insurance_type, region, status = unpack(args)
  local prior = remembered(seen_key, input_id, fingerprint)
  if prior then return prior end
  redis.call('HSET', enrollment_key, 'insurance_type', insurance_type, 'region', region, 'status', status)
  return remember(seen_key, input_id, fingerprint, {})
end


-- Keeps `key` at least `kept_ms` from now: its expiry is set, or lengthened, never shortened (an
-- instance whose clock runs ahead must not cut a day's records short for the others).
local function keep_for(key, kept_ms)
  if redis.call('PTTL', key) < tonumber(kept_ms) then redis.call('PEXPIRE', key, kept_ms) end
end
