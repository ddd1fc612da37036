--[[
Settlement service state: every key and stored record is described in docs/state.md. Each function
touches the keys of one hash slot, so each is one atomic step, on Redis or on a Redis Cluster. Its
KEYS and ARGV are declared once, by name, in this service's store.py; it unpacks them into locals
of the same names (tests/unit/test_redis_functions.py holds the two together). `remembered` and
`remember` come from shared/prelude.lua, loaded in front of this file.
]]

local function month_after(month)
  local year, number = tonumber(string.sub(month, 1, 4)), tonumber(string.sub(month, 6, 7))
  if number == 12 then return string.format('%04d-01', year + 1) end
  return string.format('%04d-%02d', year, number + 1)
end

-- Claims arriving after their month was closed count in the next open month.
local function open_month(closed_key, month)
  while redis.call('HEXISTS', closed_key, month) == 1 do month = month_after(month) end
  return month
end

-- Adds a claim's cross-province amounts (sign 1) or takes them back for a reversal (sign -1).
-- Reversals are counted on their own: one of a claim from a closed month changes no month's claims.
local function accumulate(prefix, month, owed, sign)
  local key = prefix .. ':clearing:' .. month
  local count = sign == 1 and '#claims' or '#reversals'
  for pair, amount in pairs(owed) do
    redis.call('HINCRBY', key, pair, sign * amount)
    redis.call('HINCRBY', key, pair .. count, 1)
  end
end

-- An id recorded before: the same content is a duplicate, other content a conflict; nothing changes.
local function recorded_before(claims_key, id, fingerprint)
  local existing = redis.call('HGET', claims_key, id)
  if not existing then return nil end
  if cjson.decode(existing).fingerprint ~= fingerprint then return {'conflict', existing} end
  return {'duplicate', existing}
end

-- Claim ids are unique nationally: the first claim to use one owns it — `<recipient>|<day>`, the
-- day its claim occurred, which names the bucket its record is kept in — for as long as that
-- bucket is kept (`kept_ms`). Answers the owner.
local function register_claim(keys, args)
  local owner_key = unpack(keys)
  local owner, kept_ms = unpack(args)
  redis.call('SET', owner_key, owner, 'NX', 'PX', kept_ms)
  return redis.call('GET', owner_key)
end

-- A claim record is written into the bucket of the day its claim occurred; the bucket is kept
-- until that day's claims can no longer come, whichever write comes last (`kept_ms` from now).
local function keep(claims_key, id, encoded, kept_ms)
  redis.call('HSET', claims_key, id, encoded)
  keep_for(claims_key, kept_ms)
end

-- Counts a province's new claim; true if it is beyond the province's bounds: claims for this
-- recipient this day, or claims in this minute (counted per shard: the bound is the province's
-- over the shards, and claims of many recipients spread evenly over them). The counts expire
-- after two of their days or minutes (`day_kept_ms`, `minute_kept_ms`, in Redis's time).
local function beyond_bounds(day_key, minute_key, record, per_recipient_day, per_shard_minute, day_kept_ms,
                             minute_kept_ms)
  local today = redis.call('HINCRBY', day_key, record.recipient_id, 1)
  redis.call('PEXPIRE', day_key, day_kept_ms)
  local this_minute = redis.call('HINCRBY', minute_key, record.province, 1)
  redis.call('PEXPIRE', minute_key, minute_kept_ms)
  return today > per_recipient_day or this_minute > per_shard_minute
end

-- A new claim is recorded (pending, or final if refused); a claim of a province beyond its bounds
-- is refused RATE_LIMITED, final like any refusal: every redelivery gets the same answer.
-- `record`: json with .fingerprint, .province, .recipient_id; the bounds are what a recipient may
-- have a day and what a province may send a minute in this shard; `refusal`: the result json then.
local function accept(keys, args)
  local claims_key, day_counts_key, minute_counts_key = unpack(keys)
  local claim_id, encoded, per_recipient_day, per_shard_minute, day_counts_kept_ms, minute_counts_kept_ms, refusal,
        kept_ms = unpack(args)
  local record = cjson.decode(encoded)
  local prior = recorded_before(claims_key, claim_id, record.fingerprint)
  if prior then return prior end
  if record.province ~= '' and beyond_bounds(day_counts_key, minute_counts_key, record, tonumber(per_recipient_day),
                                             tonumber(per_shard_minute), day_counts_kept_ms,
                                             minute_counts_kept_ms) then
    record.status, record.result = 'final', cjson.decode(refusal)
    encoded = cjson.encode(record)
  end
  keep(claims_key, claim_id, encoded, kept_ms)
  return {'applied', encoded}
end

-- The wallet's answer completes a pending claim, once. An answer for no claim recorded here, or
-- not for this claim as recorded, is refused and changes nothing.
-- `result`: json {status, paid, payers, reason, owed, at}; `asked`: fen asked of the grants.
local function finish(keys, args)
  local claims_key, closed_key = unpack(keys)
  local claim_id, result, month, shard_prefix, recipient, asked, kept_ms = unpack(args)
  local stored = redis.call('HGET', claims_key, claim_id)
  if not stored then return {'refused', cjson.encode({why = 'unknown'})} end
  local record = cjson.decode(stored)
  -- An answer must be for this claim as recorded: its recipient, and what was asked of the grants.
  if record.kind ~= 'settle' or record.recipient_id ~= recipient or tostring(record.payable) ~= asked then
    return {'refused', cjson.encode({why = 'mismatch'})}
  end
  if record.status ~= 'pending' then return {'duplicate', stored} end
  result = cjson.decode(result)
  result.month = open_month(closed_key, month)
  accumulate(shard_prefix, result.month, result.owed, 1)
  record.status, record.result = 'final', result
  local encoded = cjson.encode(record)
  keep(claims_key, claim_id, encoded, kept_ms)
  return {'applied', encoded}
end

-- Whether a province may know of `original`: for the recipient it names, one it sent itself, or
-- one of its care sent on the national topic.
local function known_to(original, recipient_id, province)
  if not original or original.recipient_id ~= recipient_id then return false end
  local sender = original.province or ''
  if sender ~= '' then return sender == province end
  return original.kind == 'settle' and string.sub(original.service_region, 1, 2) == province
end

-- Why a reversal cannot apply, or nil: only a settled or partial claim of the same recipient may
-- be reversed, once, within the idempotency window of the claim (`window_opens`: the oldest
-- occurred_at taken now; both are shared/clock.py's rfc3339, in one zone and one form, so they
-- compare as text). A claim whose record has left Redis is unknown: it was older than the window.
-- `original_claims_key`: the bucket the registry's owner names (the reversal's own if none). `owner` (from the registry, '' if never seen) tells a claim recorded in
-- another shard, or not yet recorded, from an id never seen. A reversal sent on a province's own
-- topic (`province`, '' on the national one) may reverse only a claim of that province's care, and
-- every other claim id is unknown to it, whether it exists or not, for whom, and where: a province
-- cannot probe other provinces' claims by naming their ids.
local function reversal_refusal(original, recipient_id, owner, province, window_opens)
  if province ~= '' and not known_to(original, recipient_id, province) then return 'UNKNOWN_CLAIM' end
  if not original then return owner == '' and 'UNKNOWN_CLAIM' or 'NOT_REVERSIBLE' end
  if original.kind ~= 'settle' or original.recipient_id ~= recipient_id then return 'NOT_REVERSIBLE' end
  if (original.occurred_at or '') < window_opens then return 'NOT_REVERSIBLE' end  -- past its window
  local paid = original.status == 'final'
    and (original.result.status == 'settled' or original.result.status == 'partial')
  if not paid then return 'NOT_REVERSIBLE' end
  if original.reversed_by then return 'ALREADY_REVERSED' end
  return nil
end

-- A refund (退费) cancels a whole settled claim. A province's reversals count against its bounds
-- as its claims do (refused RATE_LIMITED beyond them, before anything is read of the claim named).
-- `owner`: whom the registry says the original id belongs to ('' if never seen); `province`: the
-- province whose topic it came on ('' for the national topic); the bounds as for `accept`.
local function reverse(keys, args)
  local claims_key, original_claims_key, closed_key, day_counts_key, minute_counts_key = unpack(keys)
  local reversal_id, encoded, original_id, month, shard_prefix, now, owner, province, per_recipient_day,
        per_shard_minute, day_counts_kept_ms, minute_counts_kept_ms, window_opens, kept_ms,
        original_kept_ms = unpack(args)
  local record = cjson.decode(encoded)
  local prior = recorded_before(claims_key, reversal_id, record.fingerprint)
  if prior then return prior end
  local result = {at = now, paid = 0, payers = {}, owed = {}}
  local original, refusal = nil, nil
  if province ~= '' and beyond_bounds(day_counts_key, minute_counts_key, record, tonumber(per_recipient_day),
                                      tonumber(per_shard_minute), day_counts_kept_ms, minute_counts_kept_ms) then
    refusal = 'RATE_LIMITED'
  else
    original = redis.call('HGET', original_claims_key, original_id)
    original = original and cjson.decode(original) or nil
    refusal = reversal_refusal(original, record.recipient_id, owner, province, window_opens)
  end
  if refusal then
    result.status, result.reason = 'rejected', refusal
  else
    result.status, result.paid, result.payers, result.owed = 'reversed', original.result.paid,
      original.result.payers, original.result.owed
    result.month = open_month(closed_key, month)
    accumulate(shard_prefix, result.month, result.owed, -1)
    -- The province that sent the claim hears of its refund, whoever sent the refund; the day's
    -- reconciliation counts the refund where the claim was counted.
    record.claim_province = original.province or ''
    record.category, record.service_region, record.recipient_region =
      original.category, original.service_region, original.recipient_region
    original.reversed_by = reversal_id
    keep(original_claims_key, original_id, cjson.encode(original), original_kept_ms)
  end
  -- A refused reversal asks for nothing back and tells nothing of the claim it named.
  record.status, record.result, record.requested = 'final', result, result.paid
  encoded = cjson.encode(record)
  keep(claims_key, reversal_id, encoded, kept_ms)
  return {'applied', encoded}
end

-- The totals stay the strings Redis holds: as Lua numbers cjson would keep only 14 digits.
local function close_month(keys, args)
  local closed_key, clearing_key = unpack(keys)
  local month, now = unpack(args)
  local closed = redis.call('HGET', closed_key, month)
  if closed then return closed end
  local totals = {_closed_at = now}
  local fields = redis.call('HGETALL', clearing_key)
  for i = 1, #fields, 2 do totals[fields[i]] = fields[i + 1] end
  local encoded = cjson.encode(totals)
  redis.call('HSET', closed_key, month, encoded)
  return encoded
end

-- The exact statistics and reconciliation: a published result or dead letter counts once, by its event
-- id, among the ids counted for the day of its time (a result published again keeps its time; an
-- answer given again on another day is another answer), in its minute (and a settlement or a refund
-- in its day), and marks them to be published. A mark's value is drawn from the shard's own sequence
-- (`#`), never used twice: a publisher clears only the mark it read, never one set after (by a
-- result it did not publish). `added`: JSON {minute = {field = amount}, day = {field = amount}},
-- amounts as strings; a part whose sums are no longer kept is empty.
local MARKS = '#'
local function count(keys, args)
  local counted_key, minute_key, day_key, dirty_key = unpack(keys)
  local event_id, minute, day, counted_kept_ms, minute_kept_ms, day_kept_ms, added = unpack(args)
  if redis.call('HSETNX', counted_key, event_id, '') == 0 then return {'duplicate', '{}'} end
  keep_for(counted_key, counted_kept_ms)
  added = cjson.decode(added)
  local mark = nil
  for _, part in ipairs({{added.minute, minute_key, 'minute|' .. minute, minute_kept_ms},
                        {added.day, day_key, 'day|' .. day, day_kept_ms}}) do
    local fields, key, name, kept_ms = unpack(part)
    if next(fields) then
      for field, amount in pairs(fields) do redis.call('HINCRBY', key, field, amount) end
      keep_for(key, kept_ms)
      mark = mark or redis.call('HINCRBY', dirty_key, MARKS, 1)
      redis.call('HSET', dirty_key, name, mark)
    end
  end
  keep_for(dirty_key, day_kept_ms)
  return {'applied', '{}'}
end

-- A minute or day published as it stood when `mark` was read: the mark goes, unless another was
-- set meanwhile (what set it is published next time).
local function published(keys, args)
  local dirty_key = unpack(keys)
  local name, mark = unpack(args)
  if redis.call('HGET', dirty_key, name) == mark then return redis.call('HDEL', dirty_key, name) end
  return 0
end

register('settlement_register_claim', register_claim)
register('settlement_count', count)
register('settlement_published', published)
register('settlement_accept', accept)
register('settlement_finish', finish)
register('settlement_reverse', reverse)
register('settlement_close_month', close_month)
register('settlement_record_enrollment', record_enrollment_copy)
