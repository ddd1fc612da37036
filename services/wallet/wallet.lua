--[[
Wallet service state. Each function touches the keys of one person's hash slot ({p:<person_id>}).
Per person X (prefix wal:{p:X}):
  :seen           hash  input id -> "<fingerprint>|<result json>"
  :account        hash  balance, frozen, credited, spent, paid, refunded (fen, integers);
                        insurance_type, region, status; supervision ('' or the freeze reason)
  :grants         hash  recipient id -> remaining quota (fen): what X froze for that recipient
  :relationships  hash  recipient id -> recipient region, for X's active relationships
  :draws          hash  claim id -> fen that claim drew from X's grants (kept until refunded)
  :grants-on:<YYYYMMDD>  counter of X's successful grants that Asia/Shanghai day (expires)
  :providers      zset  providers who granted to X, scored by their first grant (draw order)
]]

local function num(value) return tonumber(value) or 0 end

local function account_view(account_key, result)
  local values = redis.call('HMGET', account_key, 'balance', 'frozen')
  result.balance, result.frozen = num(values[1]), num(values[2])
  return result
end

-- KEYS: seen, account   ARGV: input_id, fingerprint, amount, now
local function credit(keys, args)
  local prior = remembered(keys[1], args[1], args[2])
  if prior then return prior end
  redis.call('HINCRBY', keys[2], 'balance', args[3])
  redis.call('HINCRBY', keys[2], 'credited', args[3])
  return remember(keys[1], args[1], args[2], account_view(keys[2], {type = 'credited', amount = num(args[3]), at = args[4]}))
end

-- KEYS: seen, account   ARGV: input_id, fingerprint, amount, now
local function spend(keys, args)
  local prior = remembered(keys[1], args[1], args[2])
  if prior then return prior end
  local amount = num(args[3])
  local state = redis.call('HMGET', keys[2], 'balance', 'frozen', 'supervision')
  local result = {type = 'spend_rejected', amount = amount, at = args[4]}
  if state[3] and state[3] ~= '' then
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

-- KEYS: seen, account, grants, relationships, grants-on:<today>
-- ARGV: input_id, fingerprint, recipient, recipient_region, amount, refusal, max_per_day,
--       counter_ttl_seconds, now
local function grant(keys, args)
  local prior = remembered(keys[1], args[1], args[2])
  if prior then return prior end
  local recipient, amount = args[3], num(args[5])
  local state = redis.call('HMGET', keys[2], 'balance', 'frozen', 'supervision', 'insurance_type', 'status')
  local related_region = redis.call('HGET', keys[4], recipient)
  local result = {type = 'grant_rejected', amount = amount, recipient = recipient, at = args[9]}
  if args[6] ~= '' then
    result.reason = args[6]
  elseif state[3] and state[3] ~= '' then
    result.reason = 'ACCOUNT_FROZEN'
  elseif state[4] ~= 'employee' then
    result.reason = 'PROVIDER_NOT_EMPLOYEE'
  elseif state[5] ~= 'normal' then
    result.reason = 'PROVIDER_STATUS_ABNORMAL'
  elseif not related_region then
    result.reason = 'RELATIONSHIP_NOT_ACTIVE'
  elseif related_region ~= args[4] then
    result.reason = 'RECIPIENT_MISMATCH'
  elseif num(redis.call('GET', keys[5])) >= num(args[7]) then
    result.reason = 'DAILY_TRANSFER_LIMIT'
  elseif num(state[1]) - num(state[2]) < amount then
    result.reason = 'INSUFFICIENT_BALANCE'
  else
    redis.call('HINCRBY', keys[2], 'frozen', amount)
    redis.call('HINCRBY', keys[3], recipient, amount)
    redis.call('INCR', keys[5])
    redis.call('EXPIRE', keys[5], args[8])
    result.type = 'granted'
  end
  return remember(keys[1], args[1], args[2], account_view(keys[2], result))
end

-- The recipient's side of a grant: remember the provider for draws (first grant decides the order).
-- KEYS: providers   ARGV: provider, first_grant_ms
local function index_provider(keys, args)
  return redis.call('ZADD', keys[1], 'NX', args[2], args[1])
end

-- Rule 11. KEYS: seen, account, grants, relationships
-- ARGV: input_id, fingerprint, event type, recipient, recipient region, now
local function relationship_changed(keys, args)
  local prior = remembered(keys[1], args[1], args[2])
  if prior then return prior end
  local recipient = args[4]
  local result = {type = '', recipient = recipient, at = args[6]}
  if args[3] == 'established' then
    redis.call('HSET', keys[4], recipient, args[5])
  elseif redis.call('HDEL', keys[4], recipient) == 1 then
    local remaining = num(redis.call('HGET', keys[3], recipient))
    redis.call('HDEL', keys[3], recipient)
    if remaining > 0 then
      redis.call('HINCRBY', keys[2], 'frozen', -remaining)
      result.type, result.amount = 'released', remaining
      account_view(keys[2], result)
    end
  end
  return remember(keys[1], args[1], args[2], result)
end

-- Rule 16. KEYS: seen, account   ARGV: input_id, fingerprint, action, reason, now
local function supervise(keys, args)
  local prior = remembered(keys[1], args[1], args[2])
  if prior then return prior end
  local frozen = args[3] == 'freeze'
  redis.call('HSET', keys[2], 'supervision', frozen and args[4] or '')
  return remember(keys[1], args[1], args[2],
    account_view(keys[2], {type = frozen and 'frozen' or 'unfrozen', amount = 0, at = args[5]}))
end

-- Draw, step 1, in the recipient's slot: the stored answer if this claim was drawn before,
-- else the providers in draw order and whether the recipient's account is frozen.
-- KEYS: seen, providers, account   ARGV: claim_id
local function draw_begin(keys, args)
  local answered = redis.call('HGET', keys[1], 'draw:' .. args[1])
  if answered then return {'duplicate', answered} end
  local supervision = redis.call('HGET', keys[3], 'supervision')
  local frozen = (supervision and supervision ~= '') and '1' or '0'
  return {'open', frozen, unpack(redis.call('ZRANGE', keys[2], 0, -1))}
end

-- Draw, step 2, in each provider's slot: take up to `needed` from the grant, once per claim.
-- KEYS: seen, account, grants, draws   ARGV: claim_id, recipient, needed, now
local function draw_from_grant(keys, args)
  local prior = remembered(keys[1], 'draw:' .. args[1], '-')
  if prior then return prior end
  local recipient, needed = args[2], num(args[3])
  local state = redis.call('HMGET', keys[2], 'supervision', 'region')
  local take = 0
  if not (state[1] and state[1] ~= '') then   -- a frozen provider's quota pays nothing
    take = math.min(num(redis.call('HGET', keys[3], recipient)), needed)
  end
  local result = {amount = take, region = state[2] or '', at = args[4]}
  if take > 0 then
    redis.call('HINCRBY', keys[3], recipient, -take)
    redis.call('HINCRBY', keys[2], 'frozen', -take)
    redis.call('HINCRBY', keys[2], 'balance', -take)
    redis.call('HINCRBY', keys[2], 'paid', take)
    redis.call('HSET', keys[4], args[1], take)
  end
  return remember(keys[1], 'draw:' .. args[1], '-', account_view(keys[2], result))
end

-- Draw, step 3, in the recipient's slot: store the answer (the first one stands).
-- KEYS: seen   ARGV: claim_id, answer json
local function draw_finish(keys, args)
  if redis.call('HSETNX', keys[1], 'draw:' .. args[1], args[2]) == 1 then return {'applied', args[2]} end
  return {'duplicate', redis.call('HGET', keys[1], 'draw:' .. args[1])}
end

-- Reversal (退费), in the provider's slot: what the original claim drew from this provider goes
-- back to the grant while the relationship lasts, else to the provider's own account.
-- KEYS: seen, account, grants, relationships, draws
-- ARGV: refund_id, original_claim_id, recipient, now
local function refund(keys, args)
  local prior = remembered(keys[1], 'refund:' .. args[1], '-')
  if prior then return prior end
  local recipient = args[3]
  local amount = num(redis.call('HGET', keys[5], args[2]))
  local result = {amount = amount, recipient = recipient, to = 'none', at = args[4]}
  if amount > 0 then
    redis.call('HDEL', keys[5], args[2])
    redis.call('HINCRBY', keys[2], 'balance', amount)
    redis.call('HINCRBY', keys[2], 'refunded', amount)
    if redis.call('HEXISTS', keys[4], recipient) == 1 then
      redis.call('HINCRBY', keys[3], recipient, amount)
      redis.call('HINCRBY', keys[2], 'frozen', amount)
      result.to = 'grant'
    else
      result.to = 'account'
    end
  end
  return remember(keys[1], 'refund:' .. args[1], '-', account_view(keys[2], result))
end

redis.register_function('wallet_credit', credit)
redis.register_function('wallet_spend', spend)
redis.register_function('wallet_grant', grant)
redis.register_function('wallet_index_provider', index_provider)
redis.register_function('wallet_relationship_changed', relationship_changed)
redis.register_function('wallet_record_enrollment', record_enrollment_copy)
redis.register_function('wallet_supervise', supervise)
redis.register_function('wallet_draw_begin', draw_begin)
redis.register_function('wallet_draw_from_grant', draw_from_grant)
redis.register_function('wallet_draw_finish', draw_finish)
redis.register_function('wallet_refund', refund)
