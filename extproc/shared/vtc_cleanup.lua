-- KEYS: totals, born, at, chg. Deletes the tenants not pushed since ARGV[1] (wall time).
local at = redis.call('HGETALL', KEYS[3])
local n = 0
for i = 1, #at, 2 do
  if tonumber(at[i + 1]) < tonumber(ARGV[1]) then
    local tenant = at[i]
    redis.call('HDEL', KEYS[1], tenant)
    redis.call('HDEL', KEYS[2], tenant)
    redis.call('HDEL', KEYS[3], tenant)
    redis.call('ZREM', KEYS[4], tenant)
    n = n + 1
  end
end
return n
