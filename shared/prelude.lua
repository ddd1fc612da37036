--[[
Loaded in front of every service's Redis Functions library.

Exactly-once effect:
A function first asks `remembered`: an input id seen before with the same fingerprint returns
{"duplicate", stored result}, with another fingerprint {"conflict", ""}; then it applies its
effect and `remember`s the result in the same atomic step, returning {"applied", result}.

Seen ids live in two generations per person and input topic (shared/window.py: InputWindow):
`seen_key`, the current one, and `earlier_seen_key`; a lookup reads both. The current one's field
'' (an input id is never empty) holds when it began, in ms of the services' clock. Once it is
`seen_generation_ms` old, the next `remember` makes it the earlier one (the one before is dropped) and
begins a new one. So an id is recognised for at least a generation after it was applied, and the
window lets in no copy later than that. Each key also expires `seen_kept_ms` after its last write
(a generation in Redis's time): a person who goes quiet leaves nothing behind.
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

-- Keeps `key` at least `kept_ms` from now: its expiry is set, or lengthened, never shortened (an
-- instance whose clock runs ahead must not cut a day's records short for the others).
local function keep_for(key, kept_ms)
  if redis.call('PTTL', key) < tonumber(kept_ms) then redis.call('PEXPIRE', key, kept_ms) end
end

local GENERATION_BEGAN = ''  -- the field of a current generation that holds when it began

-- An input's seen ids, from the keys and arguments every function that applies one receives
-- (shared/window.py: SEEN_KEYS, SEEN_ARGS). `outside_window`: the reason an input outside its
-- window is refused for ('' within it).
local function seen_ids(seen_key, earlier_seen_key, seen_generation_ms, now_ms, seen_kept_ms, outside_window)
  return {key = seen_key, earlier_key = earlier_seen_key, generation_ms = tonumber(seen_generation_ms),
          now_ms = tonumber(now_ms), kept_ms = seen_kept_ms, outside_window = outside_window}
end

-- The answer to an input seen before, or to one outside its window: an input applied and delivered
-- again late (a crash before its answer was published) gets its stored answer; one never applied
-- is refused, nothing read but its id.
local function remembered(seen, input_id, fingerprint)
  local prior = redis.call('HGET', seen.key, input_id) or redis.call('HGET', seen.earlier_key, input_id)
  if not prior then
    if seen.outside_window and seen.outside_window ~= '' then
      return {'refused', cjson.encode({why = seen.outside_window})}
    end
    return nil
  end
  local bar = string.find(prior, '|', 1, true)
  if string.sub(prior, 1, bar - 1) ~= fingerprint then return {'conflict', ''} end
  return {'duplicate', string.sub(prior, bar + 1)}
end

local function remember(seen, input_id, fingerprint, result)
  local began = tonumber(redis.call('HGET', seen.key, GENERATION_BEGAN))
  if began and seen.now_ms - began >= seen.generation_ms then
    redis.call('RENAME', seen.key, seen.earlier_key)
    -- Its ids stay recognised until a generation after it ended: at least a generation after each
    -- was applied, at most two (the deep audit's horizon counts on it). In Redis's own time.
    local ended_ms = began + seen.generation_ms
    redis.call('PEXPIRE', seen.earlier_key,
               math.max(1, math.floor(tonumber(seen.kept_ms) * (ended_ms + seen.generation_ms - seen.now_ms)
                                      / seen.generation_ms)))
    began = nil
  end
  if not began then redis.call('HSET', seen.key, GENERATION_BEGAN, seen.now_ms) end
  local encoded = cjson.encode(result)
  redis.call('HSET', seen.key, input_id, fingerprint .. '|' .. encoded)
  keep_for(seen.key, seen.kept_ms)
  return {'applied', encoded}
end

-- A service's own copy of a person's enrollment (each service keeps its own; none reads another's).
local function record_enrollment_copy(keys, args)
  local seen_key, earlier_seen_key, enrollment_key = unpack(keys)
  local input_id, fingerprint, seen_generation_ms, now_ms, seen_kept_ms, outside_window, insurance_type,
        region, status = unpack(args)
  local seen = seen_ids(seen_key, earlier_seen_key, seen_generation_ms, now_ms, seen_kept_ms, outside_window)
  local prior = remembered(seen, input_id, fingerprint)
  if prior then return prior end
  redis.call('HSET', enrollment_key, 'insurance_type', insurance_type, 'region', region, 'status', status)
  return remember(seen, input_id, fingerprint, {})
end
