//! A connection kept across batches, and the one rule for when a failed
//! exchange on it is tried again at once.

use std::fmt;
use std::io;

use crate::{Error, Result, log};

/// A connection kept from one batch to the next.
///
/// Brokers, proxies and load balancers close connections that sit idle, and a
/// transport only learns it when the next batch fails on the dead socket.
/// [`Kept::exchange`] handles that case with one rule: when the exchange fails
/// because the peer closed the connection, the connection was **kept from an
/// earlier batch**, and the peer had **acknowledged nothing** of this batch,
/// the connection is replaced and the exchange runs once more at once.
/// Otherwise the connection is dropped and the error returned; the next batch
/// connects again.
///
/// The rule never re-sends what the peer acknowledged, and never retries a
/// connection opened for this very batch (that one failing is news, not an
/// idle time-out).
///
/// ```
/// use std::io;
/// use outbox_relay_guest::net::{Broken, Kept};
///
/// // A "connection" that the peer closed after its first exchange.
/// struct Conn { used: bool }
/// let mut connects = 0;
/// let mut kept = Kept::new("demo at broker:1");
/// kept.put(Conn { used: false });
/// let mut exchange = |conn: &mut Conn| {
///     if std::mem::replace(&mut conn.used, true) {
///         Err(Broken::io(io::ErrorKind::UnexpectedEof.into(), false))
///     } else {
///         Ok("sent")
///     }
/// };
/// let mut connect = || { connects += 1; Ok(Conn { used: false }) };
/// assert_eq!(kept.exchange(&mut connect, &mut exchange)?, "sent");
/// // The kept connection is found closed: replaced once, the batch goes out.
/// assert_eq!(kept.exchange(&mut connect, &mut exchange)?, "sent");
/// assert_eq!(connects, 1);
/// # Ok::<(), outbox_relay_guest::Error>(())
/// ```
pub struct Kept<C> {
    peer: String,
    conn: Option<C>,
}

/// Why an exchange failed on its connection, which is then dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    reason: String,
    closed: bool,
    acknowledged: bool,
}

impl Broken {
    /// The socket failed with `err`. `acknowledged`: the peer had confirmed
    /// part of this exchange (a reply, an ack) before it failed.
    pub fn io(err: io::Error, acknowledged: bool) -> Self {
        Broken {
            closed: super::is_closed(&err),
            reason: err.to_string(),
            acknowledged,
        }
    }

    /// A failure described by `reason`; `closed` when it means the peer closed
    /// the connection (see [`is_closed`](super::is_closed)).
    pub fn new(reason: impl fmt::Display, closed: bool, acknowledged: bool) -> Self {
        Broken {
            reason: reason.to_string(),
            closed,
            acknowledged,
        }
    }
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl<C> Kept<C> {
    /// No connection yet. `peer` names the other end in logs and errors,
    /// e.g. `"redis at cache:6379"`.
    pub fn new(peer: impl Into<String>) -> Self {
        Kept {
            peer: peer.into(),
            conn: None,
        }
    }

    /// The peer's name, as given to [`Kept::new`].
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Keeps `conn` (one opened in `init`, say) for the next exchange.
    pub fn put(&mut self, conn: C) {
        self.conn = Some(conn);
    }

    /// Whether a connection is kept.
    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// The kept connection, if any.
    pub fn get_mut(&mut self) -> Option<&mut C> {
        self.conn.as_mut()
    }

    /// Drops the kept connection, so the next exchange connects again (after
    /// a reply that says this connection should not be reused, say).
    pub fn close(&mut self) {
        self.conn = None;
    }

    /// Drops the kept connection when `stale` says so (it sat idle past the
    /// peer's keep-alive, say).
    pub fn close_if(&mut self, stale: impl FnOnce(&mut C) -> bool) {
        if self.conn.as_mut().is_some_and(stale) {
            self.conn = None;
        }
    }

    /// Runs `exchange` on the kept connection, or on a new one from `connect`,
    /// with the reconnect rule described on [`Kept`].
    ///
    /// `exchange` may run twice; it must record what the peer acknowledged
    /// outside itself (in a results vector it captures) and say so in its
    /// [`Broken`]. The error is `connect`'s, or `"{peer}: {reason}"`.
    pub fn exchange<T>(
        &mut self,
        mut connect: impl FnMut() -> Result<C>,
        mut exchange: impl FnMut(&mut C) -> core::result::Result<T, Broken>,
    ) -> Result<T> {
        let mut first_try = true;
        loop {
            let reused = self.conn.is_some();
            let conn = match self.conn.take() {
                Some(conn) => conn,
                None => connect()?,
            };
            let conn = self.conn.insert(conn);
            match exchange(conn) {
                Ok(done) => return Ok(done),
                Err(broken) => {
                    self.conn = None;
                    if first_try && reused && broken.closed && !broken.acknowledged {
                        log::info(&format!(
                            "{}: the connection kept from an earlier batch was closed ({broken}); reconnecting",
                            self.peer
                        ));
                        first_try = false;
                        continue;
                    }
                    log::warn(&format!("{}: {broken}; will reconnect", self.peer));
                    return Err(Error::new(format!("{}: {broken}", self.peer)));
                }
            }
        }
    }
}

impl<C> fmt::Debug for Kept<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kept")
            .field("peer", &self.peer)
            .field("open", &self.conn.is_some())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    /// Counts connects; each exchange pops the next scripted answer.
    struct Script {
        connects: usize,
        answers: Vec<core::result::Result<&'static str, Broken>>,
        runs: usize,
    }

    fn run(kept: &mut Kept<u32>, s: &mut Script) -> Result<&'static str> {
        kept.exchange(
            || {
                s.connects += 1;
                Ok(0)
            },
            |_| {
                s.runs += 1;
                s.answers.remove(0)
            },
        )
    }

    fn script(answers: Vec<core::result::Result<&'static str, Broken>>) -> Script {
        Script {
            connects: 0,
            answers,
            runs: 0,
        }
    }

    fn closed(acknowledged: bool) -> Broken {
        Broken::io(ErrorKind::ConnectionReset.into(), acknowledged)
    }

    #[test]
    fn a_kept_connection_found_closed_is_replaced_once() {
        let mut kept = Kept::new("p");
        kept.put(7);
        let mut s = script(vec![Err(closed(false)), Ok("ok")]);
        assert_eq!(run(&mut kept, &mut s).unwrap(), "ok");
        assert_eq!((s.connects, s.runs), (1, 2));
        assert!(kept.is_open());
    }

    #[test]
    fn no_second_try_after_an_ack_a_fresh_connection_or_a_slow_peer() {
        // Something was acknowledged: trying again would re-send it.
        let mut kept = Kept::new("p");
        kept.put(7);
        let mut s = script(vec![Err(closed(true))]);
        let e = run(&mut kept, &mut s).unwrap_err();
        assert_eq!(e.message(), "p: connection reset");
        assert!(!kept.is_open());
        // A connection made for this batch failed: not an idle time-out.
        let mut s = script(vec![Err(closed(false))]);
        assert!(run(&mut kept, &mut s).is_err());
        assert_eq!((s.connects, s.runs), (1, 1));
        // A time-out is not a closed connection.
        kept.put(7);
        let mut s = script(vec![Err(Broken::io(ErrorKind::TimedOut.into(), false))]);
        assert!(run(&mut kept, &mut s).is_err());
        assert_eq!(s.runs, 1);
        // Twice closed: the second failure is returned.
        kept.put(7);
        let mut s = script(vec![Err(closed(false)), Err(closed(false))]);
        assert!(run(&mut kept, &mut s).is_err());
        assert_eq!((s.connects, s.runs), (1, 2));
    }

    #[test]
    fn a_failed_connect_is_returned_as_it_is() {
        let mut kept: Kept<u32> = Kept::new("p");
        let e = kept
            .exchange(|| Err(Error::new("cannot connect to h:1")), |_| Ok(()))
            .unwrap_err();
        assert_eq!(e.message(), "cannot connect to h:1");
        kept.put(1);
        kept.close_if(|c| *c == 1);
        assert!(!kept.is_open());
    }
}
