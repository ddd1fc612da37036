--[[
Wallet service state. Each function touches the keys of one person's hash slot ({p:<person_id>}).
Per person X (prefix wal:{p:X}):
  :seen:<topic>   hash  input id -> "<fingerprint>|<result json>", one hash per input topic, so
                        that an id of one topic never meets another topic's or an internal one
  :account        hash  balance, frozen, credited, spent, paid, refunded (fen, integers);
                        insurance_type, region, status; freezes (standing supervision freezes);
                        seq (the account's steps so far: each event carries its own)
  :freezes        zset  event id of each standing freeze, in the order they were made
  :grants         hash  recipient id -> remaining quota (fen): what X froze for that recipient
  :relationships  hash  recipient id -> recipient region, for X's active relationships
  :rel-versions   hash  recipient id -> version of the newest relationship event applied
  :rel-since      hash  recipient id -> version at which the active relationship was established
  :grants-by-day  hash  YYYYMMDD (Asia/Shanghai) -> X's successful grants that day; days older
                        than a week are dropped as grants are made (the injected clock decides)
  :takes          hash  claim id -> what that claim drew from X's grants (json, kept)
  :refunds        hash  refund id -> result json
As a recipient:
  :providers      zset  providers who granted to X, scored by their first grant (draw order)
  :plans          hash  claim id -> the draw's plan, fixed at its first step (until answered)
  :answers        hash  claim id -> the draw's answer (the first one stored stands)
Balances go out as strings: cjson keeps only 14 significant digits of a number.
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

-- KEYS: seen:credits, account   ARGV: input_id, fingerprint, amount, now
local function credit(keys, args)
  local prior = remembered(keys[1], args[1], args[2])
  if prior then return prior end
  redis.call('HINCRBY', keys[2], 'balance', args[3])
  redis.call('HINCRBY', keys[2], 'credited', args[3])
  return remember(keys[1], args[1], args[2], account_view(keys[2], {type = 'credited', amount = num(args[3]), at = args[4]}))
end

-- KEYS: seen:spends, account   ARGV: input_id, fingerprint, amount, now
local function spend(keys, args)
  local prior = remembered(keys[1], args[1], args[2])
  if prior then return prior end
  local amount = num(args[3])
  local state = redis.call('HMGET', keys[2], 'balance', 'frozen')
  local result = {type = 'spend_rejected', amount = amount, at = args[4]}
  if is_frozen(keys[2]) then
    result.reason = 'ACCOUNT_FROZEN'
  elseif num(state[1]) - num(state[2]) < amount then
    result.reason = 'INSUFFICIENT_BALANCE'   -- frozen quota is not the holder's to spend
  else
    redis.call('HINCRBY', keys[2], 'balance', -amount)
    redis.call('HINCRBY', keys[2], 'spent', amount)
    result.type = 'spent'
  end
  return remember(keys[1], args[1], args[2], account_view(keys[2], result))
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

-- KEYS: seen:commands, account, grants, relationships, grants-by-day
-- ARGV: input_id, fingerprint, recipient, recipient_region, amount, refusal, max_per_day, today,
--       oldest day kept, closed regions (space-separated), cross-province in force ('1'/'0'), now,
--       actor, provider, the most one grant may be (fen)
-- Every limit that guards money is refused here, where the money moves, whatever Python checked.
local function grant(keys, args)
  local prior = remembered(keys[1], args[1], args[2])
  if prior then return prior end
  local recipient, amount, today = args[3], num(args[5]), args[8]
  local state = redis.call('HMGET', keys[2], 'balance', 'frozen', 'insurance_type', 'status', 'region')
  local related_region = redis.call('HGET', keys[4], recipient)
  local closed = {}
  for region in string.gmatch(args[10], '%S+') do closed[region] = true end
  local result = {type = 'grant_rejected', amount = amount, recipient = recipient, at = args[12]}
  if args[6] ~= '' then
    result.reason = args[6]
  elseif args[13] ~= args[14] then  -- checked in Python too; here, where the money moves, as well
    result.reason = 'NOT_AUTHORIZED'
  elseif amount > num(args[15]) then
    result.reason = 'TRANSFER_AMOUNT_OVER_LIMIT'
  elseif is_frozen(keys[2]) then
    result.reason = 'ACCOUNT_FROZEN'
  elseif state[3] ~= 'employee' then
    result.reason = 'PROVIDER_NOT_EMPLOYEE'
  elseif state[4] ~= 'normal' then
    result.reason = 'PROVIDER_STATUS_ABNORMAL'
  elseif not related_region then
    result.reason = 'RELATIONSHIP_NOT_ACTIVE'
  elseif related_region ~= args[4] then
    result.reason = 'RECIPIENT_MISMATCH'
  else
    result.reason = policy_refusal(state[5], related_region, closed, args[11])
  end
  if not result.reason then
    if num(redis.call('HGET', keys[5], today)) >= num(args[7]) then
      result.reason = 'DAILY_TRANSFER_LIMIT'
    elseif num(state[1]) - num(state[2]) < amount then
      result.reason = 'INSUFFICIENT_BALANCE'
    else
      redis.call('HINCRBY', keys[2], 'frozen', amount)
      redis.call('HINCRBY', keys[3], recipient, amount)
      redis.call('HINCRBY', keys[5], today, 1)
      for _, day in ipairs(redis.call('HKEYS', keys[5])) do
        if day < args[9] then redis.call('HDEL', keys[5], day) end
      end
      result.type = 'granted'
    end
  end
  return remember(keys[1], args[1], args[2], account_view(keys[2], result))
end

-- The recipient's side of a grant: remember the provider for draws (first grant decides the order).
-- KEYS: providers   ARGV: provider, first_grant_ms
local function index_provider(keys, args)
  return redis.call('ZADD', keys[1], 'NX', args[2], args[1])
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
-- KEYS: seen:relationship-events, account, grants, relationships, rel-versions, rel-since
-- ARGV: input_id, fingerprint, event type, recipient, recipient region, version ('' if none), now
local function relationship_changed(keys, args)
  local prior = remembered(keys[1], args[1], args[2])
  if prior then return prior end
  local recipient = args[4]
  local version = args[6] ~= '' and num(args[6]) or nil
  local result = {type = '', recipient = recipient, at = args[7]}
  if version and version <= num(redis.call('HGET', keys[5], recipient)) then
    result.stale = true
    return remember(keys[1], args[1], args[2], result)
  end
  if version then redis.call('HSET', keys[5], recipient, version) end
  release(keys[2], keys[3], keys[4], keys[6], recipient, result)
  if args[3] == 'established' then
    redis.call('HSET', keys[4], recipient, args[5])
    redis.call('HSET', keys[6], recipient, version or 0)
  end
  return remember(keys[1], args[1], args[2], result)
end

-- Rule 16: each freeze stands until an unfreeze lifts it (the one named, else the oldest).
-- KEYS: seen:supervision, account, freezes   ARGV: input_id, fingerprint, action, lifts, now
local function supervise(keys, args)
  local prior = remembered(keys[1], args[1], args[2])
  if prior then return prior end
  local result = {type = 'unfrozen', amount = 0, at = args[5]}
  if args[3] == 'freeze' then
    redis.call('ZADD', keys[3], redis.call('HINCRBY', keys[2], 'freeze_seq', 1), args[1])
    result.type = 'frozen'
  elseif args[4] ~= '' then
    result.lifted = redis.call('ZREM', keys[3], args[4]) == 1 and args[4] or nil
  else
    result.lifted = redis.call('ZPOPMIN', keys[3])[1]
  end
  local standing = redis.call('ZCARD', keys[3])
  redis.call('HSET', keys[2], 'freezes', standing)
  result.freezes = standing
  return remember(keys[1], args[1], args[2], account_view(keys[2], result))
end

-- Draw, step 1, in the recipient's slot: the stored answer if this claim was answered before;
-- else its plan — the providers in draw order and whether the recipient is frozen — made now if
-- this is the first step, and replayed unchanged on every later try (crash, redelivery, a second
-- instance after a rebalance), so that a retry can never draw on another plan.
-- KEYS: plans, answers, providers, account   ARGV: claim_id
local function draw_begin(keys, args)
  local answered = redis.call('HGET', keys[2], args[1])
  if answered then return {'answered', answered} end
  local plan = redis.call('HGET', keys[1], args[1])
  if not plan then
    local providers = redis.call('ZRANGE', keys[3], 0, -1)
    plan = cjson.encode({frozen = is_frozen(keys[4]), providers = #providers > 0 and providers or nil})
    redis.call('HSET', keys[1], args[1], plan)
  end
  return {'planned', plan}
end

-- Draw, step 2, in each provider's slot: take up to `needed` from the grant, once per claim.
-- The claim id belongs to one recipient: another recipient's draw under it takes nothing. The take
-- names the relationship it drew under (its `since` version), for a refund.
-- KEYS: account, grants, takes, rel-since   ARGV: claim_id, recipient, needed, now
local function draw_from_grant(keys, args)
  local recipient = args[2]
  local prior = redis.call('HGET', keys[3], args[1])
  if prior then
    if cjson.decode(prior).recipient ~= recipient then return {'conflict', ''} end
    return {'duplicate', prior}
  end
  local take = 0
  if not is_frozen(keys[1]) then   -- a frozen provider's quota pays nothing
    take = math.min(num(redis.call('HGET', keys[2], recipient)), num(args[3]))
  end
  if take > 0 then
    redis.call('HINCRBY', keys[2], recipient, -take)
    redis.call('HINCRBY', keys[1], 'frozen', -take)
    redis.call('HINCRBY', keys[1], 'balance', -take)
    redis.call('HINCRBY', keys[1], 'paid', take)
  end
  local result = account_view(keys[1], {recipient = recipient, amount = take,
    region = redis.call('HGET', keys[1], 'region') or '', since = redis.call('HGET', keys[4], recipient) or '',
    at = args[4]})
  local encoded = cjson.encode(result)
  redis.call('HSET', keys[3], args[1], encoded)
  return {'applied', encoded}
end

-- Draw, step 3, in the recipient's slot: store the answer (the first one stands); the plan is done.
-- KEYS: plans, answers   ARGV: claim_id, answer json
local function draw_finish(keys, args)
  redis.call('HDEL', keys[1], args[1])
  if redis.call('HSETNX', keys[2], args[1], args[2]) == 1 then return {'applied', args[2]} end
  return {'duplicate', redis.call('HGET', keys[2], args[1])}
end

-- Reversal (退费), in the provider's slot: what the original claim drew from this provider for
-- this recipient goes back, once, to the grant while the relationship it drew under lasts, else to
-- the account (a relationship set up again since is another one).
-- KEYS: account, grants, relationships, takes, refunds, rel-since
-- ARGV: refund_id, original_claim_id, recipient, now
local function refund(keys, args)
  local prior = redis.call('HGET', keys[5], args[1])
  if prior then return {'duplicate', prior} end
  local recipient = args[3]
  local take = redis.call('HGET', keys[4], args[2])
  take = take and cjson.decode(take) or nil
  local result = {amount = 0, recipient = recipient, to = 'none', at = args[4]}
  if take and take.recipient == recipient and not take.refunded_by and take.amount > 0 then
    local amount = take.amount
    take.refunded_by = args[1]
    redis.call('HSET', keys[4], args[2], cjson.encode(take))
    redis.call('HINCRBY', keys[1], 'balance', amount)
    redis.call('HINCRBY', keys[1], 'refunded', amount)
    if redis.call('HEXISTS', keys[3], recipient) == 1 and redis.call('HGET', keys[6], recipient) == take.since then
      redis.call('HINCRBY', keys[2], recipient, amount)
      redis.call('HINCRBY', keys[1], 'frozen', amount)
      result.to = 'grant'
    else
      result.to = 'account'
    end
    result.amount = amount
  end
  local encoded = cjson.encode(account_view(keys[1], result))
  redis.call('HSET', keys[5], args[1], encoded)
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
