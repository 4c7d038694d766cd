//! The Redis half of the shared store: budget counters, rate-limit buckets and the feedback
//! index. Every read-modify-write is one Lua script, so replicas racing for the same dollar
//! or the same request slot are serialised by Redis itself.
//!
//! Money is counted in integer nano-dollars (`HINCRBY`), so sums are exact. A budget account
//! is a hash (`settled`, `reserved`) with two companions: `:leases` (a sorted set of the
//! requests holding a reservation, scored by when it lapses) and `:lease_amt` (what each
//! holds). A reservation whose replica died lapses after `store.reservation_ttl_s` and is
//! released by the next reservation on the account. A per-month marker says the counters were
//! built from PostgreSQL; without it (Redis restarted empty) they are rebuilt before use.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

/// USD → nano-dollars.
pub fn nanos(usd: f64) -> i64 {
    (usd * 1e9).round() as i64
}

/// Nano-dollars → USD.
pub fn usd(nanos: i64) -> f64 {
    nanos as f64 / 1e9
}

static STATUS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local out = {1}
for i = 2, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'settled', 'reserved')
  out[#out + 1] = tonumber(v[1] or '0')
  out[#out + 1] = tonumber(v[2] or '0')
end
return out",
    )
});

static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local now = tonumber(redis.call('TIME')[1])
local lease, amount, lease_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for a = 2, #KEYS do
  local k = KEYS[a]
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', k .. ':leases', '-inf', now)) do
    local held = tonumber(redis.call('HGET', k .. ':lease_amt', m) or '0')
    redis.call('HINCRBY', k, 'reserved', -held)
    redis.call('HDEL', k .. ':lease_amt', m)
    redis.call('ZREM', k .. ':leases', m)
  end
  local v = redis.call('HMGET', k, 'settled', 'reserved')
  local spent = tonumber(v[1] or '0') + tonumber(v[2] or '0')
  if spent + amount > tonumber(ARGV[2 + 2 * (a - 1)]) then return {0, a - 1, spent} end
end
for a = 2, #KEYS do
  local k, ttl = KEYS[a], ARGV[3 + 2 * (a - 1)]
  redis.call('HINCRBY', k, 'reserved', amount)
  redis.call('HSET', k .. ':lease_amt', lease, amount)
  redis.call('ZADD', k .. ':leases', now + lease_ttl, lease)
  redis.call('EXPIRE', k, ttl)
  redis.call('EXPIRE', k .. ':lease_amt', ttl)
  redis.call('EXPIRE', k .. ':leases', ttl)
end
return {1}",
    )
});

static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if not redis.call('SET', KEYS[1], 1, 'NX', 'EX', 172800) then return 0 end
local lease, cost = ARGV[1], ARGV[2]
for a = 2, #KEYS do
  local k = KEYS[a]
  local held = redis.call('HGET', k .. ':lease_amt', lease)
  if held then
    redis.call('HINCRBY', k, 'reserved', -tonumber(held))
    redis.call('HDEL', k .. ':lease_amt', lease)
    redis.call('ZREM', k .. ':leases', lease)
  end
  redis.call('HINCRBY', k, 'settled', cost)
  redis.call('EXPIRE', k, ARGV[1 + a])
end
return 1",
    )
});

static REBUILD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #ARGV, 3 do
  redis.call('HINCRBY', ARGV[i], 'settled', ARGV[i + 1])
  redis.call('EXPIRE', ARGV[i], ARGV[i + 2])
end
redis.call('SET', KEYS[1], 1, 'EX', ARGV[1])
return 1",
    )
});

static RATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, tpm, need = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'r', 't', 'ts')
local r = tonumber(v[1] or rpm)
local tk = tonumber(v[2] or tpm)
local el = math.max(0, now - tonumber(v[3] or now))
local refuse, wait = false, 0
if rpm >= 0 then
  r = math.min(rpm, r + el * rpm / 60)
  if r < 1 then refuse = true; wait = (1 - r) * 60 / rpm end
end
if tpm >= 0 then
  tk = math.min(tpm, tk + el * tpm / 60)
  if tk < need then refuse = true; wait = math.max(wait, math.max(0, math.min(need, tpm) - tk) * 60 / tpm) end
end
if not refuse then
  if rpm >= 0 then r = r - 1 end
  if tpm >= 0 then tk = tk - need end
end
redis.call('HSET', KEYS[1], 'r', tostring(r), 't', tostring(tk), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], 120)
return {refuse and '0' or '1', tostring(r), tostring(tk), tostring(wait)}",
    )
});

static REFUND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('HGET', KEYS[1], 't')
if not v then return 0 end
redis.call('HSET', KEYS[1], 't', tostring(math.min(tonumber(ARGV[1]), tonumber(v) + tonumber(ARGV[2]))))
return 1",
    )
});

/// An account in a script call: its key, hard limit (nano-dollars) and time to live.
pub struct AccountArg {
    pub key: String,
    pub hard: i64,
    pub ttl_s: u64,
}

/// What a reservation script answered.
#[derive(Debug, PartialEq)]
pub enum Reserved {
    Held,
    /// The account at this index would pass its limit; spent so far (nano-dollars).
    Refused {
        index: usize,
        spent: i64,
    },
    /// The counters are not built for this month yet.
    Rebuild,
}

/// A rate-limit script's answer.
pub struct Bucket {
    pub admitted: bool,
    pub requests: f64,
    pub tokens: f64,
    pub wait_s: f64,
}

/// Redis, with a deadline on every call.
#[derive(Clone)]
pub struct Counters {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
}

pub type RedisResult<T> = Result<T, String>;

impl Counters {
    /// Connects lazily: a Redis that is down at start is an error of the first call, not of
    /// the start.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> RedisResult<Self> {
        // TCP_NODELAY: without it, Nagle's algorithm holds each small command back for the
        // previous one's ACK (milliseconds per call).
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| e.to_string())?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            timeout,
        })
    }

    /// `prefix` + `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `f` within the deadline; a call on a connection that broke (Redis restarted) is
    /// tried once more on the fresh connection the manager opens.
    async fn call<T, F, Fut>(&self, f: F) -> RedisResult<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            match f(self.conn.clone()).await {
                Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                    tracing::debug!(error = %e, "Redis connection broke; retrying once");
                    f(self.conn.clone()).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }

    pub async fn ping(&self) -> RedisResult<()> {
        self.call(
            move |mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await },
        )
        .await
        .map(|_| ())
    }

    /// `(settled, reserved)` of each account, or `None` when the month needs a rebuild.
    pub async fn status(
        &self,
        marker: &str,
        accounts: &[String],
    ) -> RedisResult<Option<Vec<(i64, i64)>>> {
        let mut inv = STATUS.key(marker);
        for a in accounts {
            inv.key(a);
        }
        let inv = &inv;
        let out: Vec<i64> = self
            .call(move |mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        if out.first() != Some(&1) {
            return Ok(None);
        }
        Ok(Some(out[1..].chunks(2).map(|p| (p[0], p[1])).collect()))
    }

    /// Reserves `amount` on every account for `lease`, or refuses.
    pub async fn reserve(
        &self,
        marker: &str,
        accounts: &[AccountArg],
        lease: &str,
        amount: i64,
        lease_ttl_s: u64,
    ) -> RedisResult<Reserved> {
        let mut inv = RESERVE.key(marker);
        inv.arg(lease).arg(amount).arg(lease_ttl_s);
        for a in accounts {
            inv.key(&a.key).arg(a.hard).arg(a.ttl_s);
        }
        let inv = &inv;
        let out: Vec<i64> = self
            .call(move |mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(match out.as_slice() {
            [1] => Reserved::Held,
            [0, index, spent] => Reserved::Refused {
                index: (*index).max(1) as usize - 1,
                spent: *spent,
            },
            _ => Reserved::Rebuild,
        })
    }

    /// Releases `lease` and adds `cost` to every account, once per lease.
    pub async fn settle(
        &self,
        accounts: &[(String, u64)],
        lease: &str,
        cost: i64,
    ) -> RedisResult<()> {
        let mut inv = SETTLE.key(self.key(&format!("settled:{lease}")));
        inv.arg(lease).arg(cost);
        for (key, ttl) in accounts {
            inv.key(key).arg(ttl);
        }
        let inv = &inv;
        self.call(move |mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    /// Adds `entries` (account key, settled nano-dollars, ttl) and sets `marker`, unless
    /// another replica set it first. Returns whether this call rebuilt.
    pub async fn rebuild(
        &self,
        marker: &str,
        marker_ttl_s: u64,
        entries: &[(String, i64, u64)],
    ) -> RedisResult<bool> {
        let mut inv = REBUILD.key(marker);
        inv.arg(marker_ttl_s);
        for (key, settled, ttl) in entries {
            inv.arg(key).arg(settled).arg(ttl);
        }
        let inv = &inv;
        self.call(move |mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            .await
            .map(|n| n == 1)
    }

    /// `(settled, reserved)` of one account.
    pub async fn account(&self, key: &str) -> RedisResult<(i64, i64)> {
        let values: Vec<Option<i64>> = self
            .call(move |mut c| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("settled")
                    .arg("reserved")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let get = |i: usize| values.get(i).copied().flatten().unwrap_or(0);
        Ok((get(0), get(1)))
    }

    /// The keys matching `pattern` (SCAN, not KEYS: it does not block Redis).
    pub async fn scan(&self, pattern: &str) -> RedisResult<Vec<String>> {
        self.call(move |mut c| async move {
            let mut found = Vec::new();
            let mut iter: redis::AsyncIter<String> = c.scan_match(pattern).await?;
            while let Some(item) = iter.next_item().await {
                found.push(item?);
            }
            Ok(found)
        })
        .await
    }

    /// One request of `tokens` tokens against a bucket (`None`: that rate is unlimited).
    pub async fn rate(
        &self,
        bucket: &str,
        rpm: Option<u32>,
        tpm: Option<u64>,
        tokens: u64,
    ) -> RedisResult<Bucket> {
        let mut inv = RATE.key(bucket);
        inv.arg(rpm.map_or(-1, i64::from))
            .arg(tpm.map_or(-1, |t| t as i64))
            .arg(tokens);
        let inv = &inv;
        let out: Vec<String> = self
            .call(move |mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        let num = |i: usize| {
            out.get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(Bucket {
            admitted: out.first().is_some_and(|v| v == "1"),
            requests: num(1),
            tokens: num(2),
            wait_s: num(3),
        })
    }

    /// Gives `tokens` back to a bucket's token count (at most `tpm`).
    pub async fn refund(&self, bucket: &str, tpm: u64, tokens: u64) -> RedisResult<()> {
        let mut inv = REFUND.key(bucket);
        inv.arg(tpm).arg(tokens);
        let inv = &inv;
        self.call(move |mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    pub async fn set(&self, key: &str, value: &str, ttl_s: u64) -> RedisResult<()> {
        self.call(move |mut c| async move { c.set_ex::<_, _, ()>(key, value, ttl_s).await })
            .await
    }

    pub async fn get(&self, key: &str) -> RedisResult<Option<String>> {
        self.call(move |mut c| async move { c.get(key).await })
            .await
    }
}
