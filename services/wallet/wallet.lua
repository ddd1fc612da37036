--[[
Wallet service state: every key and stored record is described in docs/state.md. Each function
touches the keys of one hash slot, so each is one atomic step, on Redis or on a Redis Cluster. Its
KEYS and ARGV are declared once, by name, in this service's store.py; it unpacks them into locals
of the same names (tests/unit/test_redis_functions.py holds the two together). `remembered` and
`remember` come from shared/prelude.lua, loaded in front of this file.
]]

local function num(value) return tonumber(value) or 0 end

local function account_view(account_key, result)
  local values = redis.call('HMGET', account_key, 'balance', 'frozen')
  result.balance, result.frozen = values[1] or '0', values[2] or '0'
  -- The account's step number: one account's events come from several consumers, and only this
  -- orders them as Redis applied them (a freeze, then a draw it must stop).
  result.seq = redis.call('HINCRBY', account_key, 'seq', 1)
  return result
end

local function is_frozen(account_key)
  return num(redis.call('HGET', account_key, 'freezes')) > 0
end

-- A draw's records are kept in buckets of the day its claim occurred, as long as the claim's own
-- records are (`kept_ms` from now, renewed by every write).
local function keep(bucket_key, id, encoded, kept_ms)
  redis.call('HSET', bucket_key, id, encoded)
  keep_for(bucket_key, kept_ms)
end

local function credit(keys, args)
  local seen_key, earlier_seen_key, account_key = unpack(keys)
  local input_id, fingerprint, seen_generation_ms, now_ms, seen_kept_ms, outside_window, amount, now = unpack(args)
  local seen = seen_ids(seen_key, earlier_seen_key, seen_generation_ms, now_ms, seen_kept_ms, outside_window)
  local prior = remembered(seen, input_id, fingerprint)
  if prior then return prior end
  redis.call('HINCRBY', account_key, 'balance', amount)
  redis.call('HINCRBY', account_key, 'credited', amount)
  return remember(seen, input_id, fingerprint,
                  account_view(account_key, {type = 'credited', amount = num(amount), at = now}))
end

local function spend(keys, args)
  local seen_key, earlier_seen_key, account_key = unpack(keys)
  local input_id, fingerprint, seen_generation_ms, now_ms, seen_kept_ms, outside_window, amount, now = unpack(args)
  local seen = seen_ids(seen_key, earlier_seen_key, seen_generation_ms, now_ms, seen_kept_ms, outside_window)
  local prior = remembered(seen, input_id, fingerprint)
  if prior then return prior end
  amount = num(amount)
  local state = redis.call('HMGET', account_key, 'balance', 'frozen')
  local result = {type = 'spend_rejected', amount = amount, at = now}
  if is_frozen(account_key) then
    result.reason = 'ACCOUNT_FROZEN'
  elseif num(state[1]) - num(state[2]) < amount then
    result.reason = 'INSUFFICIENT_BALANCE'   -- frozen quota is not the holder's to spend
  else
    redis.call('HINCRBY', account_key, 'balance', -amount)
    redis.call('HINCRBY', account_key, 'spent', amount)
    result.type = 'spent'
  end
  return remember(seen, input_id, fingerprint, account_view(account_key, result))
end

-- Rule 1 at grant time: both regions opened, and cross-province sharing in force.
local function policy_refusal(provider_region, recipient_region, closed, cross_province_in_force)
  for _, region in ipairs({provider_region, recipient_region}) do
    if closed[region] or closed[string.sub(region, 1, 2)] then return 'REGION_WALLET_CLOSED' end
  end
  if string.sub(provider_region, 1, 2) ~= string.sub(recipient_region, 1, 2) and cross_province_in_force ~= '1' then
    return 'CROSS_PROVINCE_NOT_IN_FORCE'
  end
  return nil
end

-- `refusal`: what Python found ('' if nothing); `closed_regions`: space-separated.
-- Every limit that guards money is refused here, where the money moves, whatever Python checked.
local function grant(keys, args)
  local seen_key, earlier_seen_key, account_key, grants_key, relationships_key, by_day_key = unpack(keys)
  local input_id, fingerprint, seen_generation_ms, now_ms, seen_kept_ms, outside_window, recipient,
        recipient_region, amount, refusal, max_per_day, today, oldest_day_kept, closed_regions,
        cross_province_in_force, now, actor, provider, max_amount = unpack(args)
  local seen = seen_ids(seen_key, earlier_seen_key, seen_generation_ms, now_ms, seen_kept_ms, outside_window)
  local prior = remembered(seen, input_id, fingerprint)
  if prior then return prior end
  amount = num(amount)
  local state = redis.call('HMGET', account_key, 'balance', 'frozen', 'insurance_type', 'status', 'region')
  local related_region = redis.call('HGET', relationships_key, recipient)
  local closed = {}
  for region in string.gmatch(closed_regions, '%S+') do closed[region] = true end
  local result = {type = 'grant_rejected', amount = amount, recipient = recipient, at = now}
  if refusal ~= '' then
    result.reason = refusal
  elseif actor ~= provider then  -- checked in Python too; here, where the money moves, as well
    result.reason = 'NOT_AUTHORIZED'
  elseif amount > num(max_amount) then
    result.reason = 'TRANSFER_AMOUNT_OVER_LIMIT'
  elseif is_frozen(account_key) then
    result.reason = 'ACCOUNT_FROZEN'
  elseif state[3] ~= 'employee' then
    result.reason = 'PROVIDER_NOT_EMPLOYEE'
  elseif state[4] ~= 'normal' then
    result.reason = 'PROVIDER_STATUS_ABNORMAL'
  elseif not related_region then
    result.reason = 'RELATIONSHIP_NOT_ACTIVE'
  elseif related_region ~= recipient_region then
    result.reason = 'RECIPIENT_MISMATCH'
  else
    result.reason = policy_refusal(state[5], related_region, closed, cross_province_in_force)
  end
  if not result.reason then
    if num(redis.call('HGET', by_day_key, today)) >= num(max_per_day) then
      result.reason = 'DAILY_TRANSFER_LIMIT'
    elseif num(state[1]) - num(state[2]) < amount then
      result.reason = 'INSUFFICIENT_BALANCE'
    else
      redis.call('HINCRBY', account_key, 'frozen', amount)
      redis.call('HINCRBY', grants_key, recipient, amount)
      redis.call('HINCRBY', by_day_key, today, 1)
      for _, day in ipairs(redis.call('HKEYS', by_day_key)) do
        if day < oldest_day_kept then redis.call('HDEL', by_day_key, day) end
      end
      result.type = 'granted'
    end
  end
  return remember(seen, input_id, fingerprint, account_view(account_key, result))
end

-- The recipient's side of a grant: remember the provider for draws (first grant decides the order).
local function index_provider(keys, args)
  local providers_key = unpack(keys)
  local provider, first_grant_ms = unpack(args)
  return redis.call('ZADD', providers_key, 'NX', first_grant_ms, provider)
end

-- Rule 11: the relationship with `recipient` has ended; its unused quota is unfrozen.
local function release(account_key, grants_key, relationships_key, since_key, recipient, result)
  if redis.call('HDEL', relationships_key, recipient) == 0 then return end
  redis.call('HDEL', since_key, recipient)
  local remaining = num(redis.call('HGET', grants_key, recipient))
  redis.call('HDEL', grants_key, recipient)
  if remaining > 0 then
    redis.call('HINCRBY', account_key, 'frozen', -remaining)
    result.type, result.amount = 'released', remaining
    account_view(account_key, result)
  end
end

-- Rules 8 and 11, in the order the relationship service decided them: an event older than one
-- already applied to the pair (lower version) changes nothing, so a late `established` never
-- revives a relationship that has ended. A newer `established` while an older relationship is
-- held means that one ended in between (its end is still on its way): its quota is released now.
-- `version`: '' if the event has none.
local function relationship_changed(keys, args)
  local seen_key, earlier_seen_key, account_key, grants_key, relationships_key, versions_key, since_key = unpack(keys)
  local input_id, fingerprint, seen_generation_ms, now_ms, seen_kept_ms, outside_window, event_type,
        recipient, recipient_region, version, now = unpack(args)
  local seen = seen_ids(seen_key, earlier_seen_key, seen_generation_ms, now_ms, seen_kept_ms, outside_window)
  local prior = remembered(seen, input_id, fingerprint)
  if prior then return prior end
  version = version ~= '' and num(version) or nil
  local result = {type = '', recipient = recipient, at = now}
  if version and version <= num(redis.call('HGET', versions_key, recipient)) then
    result.stale = true
    return remember(seen, input_id, fingerprint, result)
  end
  if version then redis.call('HSET', versions_key, recipient, version) end
  release(account_key, grants_key, relationships_key, since_key, recipient, result)
  if event_type == 'established' then
    redis.call('HSET', relationships_key, recipient, recipient_region)
    redis.call('HSET', since_key, recipient, version or 0)
  end
  return remember(seen, input_id, fingerprint, result)
end

-- Rule 16: each freeze stands until an unfreeze lifts it (the one named, else the oldest).
-- `lifts`: '' if the unfreeze names none.
local function supervise(keys, args)
  local seen_key, earlier_seen_key, account_key, freezes_key = unpack(keys)
  local input_id, fingerprint, seen_generation_ms, now_ms, seen_kept_ms, outside_window, action, lifts,
        now = unpack(args)
  local seen = seen_ids(seen_key, earlier_seen_key, seen_generation_ms, now_ms, seen_kept_ms, outside_window)
  local prior = remembered(seen, input_id, fingerprint)
  if prior then return prior end
  local result = {type = 'unfrozen', amount = 0, at = now}
  if action == 'freeze' then
    redis.call('ZADD', freezes_key, redis.call('HINCRBY', account_key, 'freeze_seq', 1), input_id)
    result.type = 'frozen'
  elseif lifts ~= '' then
    result.lifted = redis.call('ZREM', freezes_key, lifts) == 1 and lifts or nil
  else
    result.lifted = redis.call('ZPOPMIN', freezes_key)[1]
  end
  local standing = redis.call('ZCARD', freezes_key)
  redis.call('HSET', account_key, 'freezes', standing)
  result.freezes = standing
  return remember(seen, input_id, fingerprint, account_view(account_key, result))
end

-- Draw, step 1, in the recipient's slot: the stored answer if this claim was answered before;
-- else its plan — the providers in draw order and whether the recipient is frozen — made now if
-- this is the first step, and replayed unchanged on every later try (crash, redelivery, a second
-- instance after a rebalance), so that a retry can never draw on another plan.
local function draw_begin(keys, args)
  local plans_key, answers_key, providers_key, account_key = unpack(keys)
  local claim_id, kept_ms = unpack(args)
  local answered = redis.call('HGET', answers_key, claim_id)
  if answered then return {'answered', answered} end
  local plan = redis.call('HGET', plans_key, claim_id)
  if not plan then
    local providers = redis.call('ZRANGE', providers_key, 0, -1)
    plan = cjson.encode({frozen = is_frozen(account_key), providers = #providers > 0 and providers or nil})
    keep(plans_key, claim_id, plan, kept_ms)
  end
  return {'planned', plan}
end

-- Draw, step 2, in each provider's slot: take up to `needed` from the grant, once per claim.
-- The claim id belongs to one recipient: another recipient's draw under it takes nothing. The take
-- names the relationship it drew under (its `since` version), for a refund.
local function draw_from_grant(keys, args)
  local account_key, grants_key, takes_key, since_key = unpack(keys)
  local claim_id, recipient, needed, now, kept_ms = unpack(args)
  local prior = redis.call('HGET', takes_key, claim_id)
  if prior then
    if cjson.decode(prior).recipient ~= recipient then return {'conflict', ''} end
    return {'duplicate', prior}
  end
  local take = 0
  if not is_frozen(account_key) then   -- a frozen provider's quota pays nothing
    take = math.min(num(redis.call('HGET', grants_key, recipient)), num(needed))
  end
  if take > 0 then
    redis.call('HINCRBY', grants_key, recipient, -take)
    redis.call('HINCRBY', account_key, 'frozen', -take)
    redis.call('HINCRBY', account_key, 'balance', -take)
    redis.call('HINCRBY', account_key, 'paid', take)
  end
  local result = account_view(account_key, {recipient = recipient, amount = take,
    region = redis.call('HGET', account_key, 'region') or '', since = redis.call('HGET', since_key, recipient) or '',
    at = now})
  local encoded = cjson.encode(result)
  keep(takes_key, claim_id, encoded, kept_ms)
  return {'applied', encoded}
end

-- Draw, step 3, in the recipient's slot: store the answer (the first one stands); the plan is done.
local function draw_finish(keys, args)
  local plans_key, answers_key = unpack(keys)
  local claim_id, answer, kept_ms = unpack(args)
  redis.call('HDEL', plans_key, claim_id)
  if redis.call('HSETNX', answers_key, claim_id, answer) == 1 then
    keep_for(answers_key, kept_ms)
    return {'applied', answer}
  end
  return {'duplicate', redis.call('HGET', answers_key, claim_id)}
end

-- Reversal (退费), in the provider's slot: what the original claim drew from this provider for
-- this recipient goes back, once, to the grant while the relationship it drew under lasts, else to
-- the account (a relationship set up again since is another one). The take and the refund are kept
-- in the buckets of the day the original claim occurred.
local function refund(keys, args)
  local account_key, grants_key, relationships_key, takes_key, refunds_key, since_key = unpack(keys)
  local refund_id, original_claim_id, recipient, now, kept_ms = unpack(args)
  local prior = redis.call('HGET', refunds_key, refund_id)
  if prior then return {'duplicate', prior} end
  local take = redis.call('HGET', takes_key, original_claim_id)
  take = take and cjson.decode(take) or nil
  local result = {amount = 0, recipient = recipient, to = 'none', at = now}
  if take and take.recipient == recipient and not take.refunded_by and take.amount > 0 then
    local amount = take.amount
    take.refunded_by = refund_id
    keep(takes_key, original_claim_id, cjson.encode(take), kept_ms)
    redis.call('HINCRBY', account_key, 'balance', amount)
    redis.call('HINCRBY', account_key, 'refunded', amount)
    if redis.call('HEXISTS', relationships_key, recipient) == 1
        and redis.call('HGET', since_key, recipient) == take.since then
      redis.call('HINCRBY', grants_key, recipient, amount)
      redis.call('HINCRBY', account_key, 'frozen', amount)
      result.to = 'grant'
    else
      result.to = 'account'
    end
    result.amount = amount
  end
  local encoded = cjson.encode(account_view(account_key, result))
  keep(refunds_key, refund_id, encoded, kept_ms)
  return {'applied', encoded}
end

register('wallet_credit', credit)
register('wallet_spend', spend)
register('wallet_grant', grant)
register('wallet_index_provider', index_provider)
register('wallet_relationship_changed', relationship_changed)
register('wallet_record_enrollment', record_enrollment_copy)
register('wallet_supervise', supervise)
register('wallet_draw_begin', draw_begin)
register('wallet_draw_from_grant', draw_from_grant)
register('wallet_draw_finish', draw_finish)
register('wallet_refund', refund)
