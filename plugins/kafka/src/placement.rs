//! Where each message of a batch goes: its topic's partitions from the
//! metadata, then murmur2 of the key (the Java client's choice), the fixed
//! `partition`, or one partition per topic per batch for unkeyed records
//! (the Java client's "sticky" choice).

use std::collections::{BTreeMap, HashMap};

use outbox_relay_guest::Outcome;

use crate::cluster::{Cluster, TopicState};
use crate::murmur2;
use crate::produce::{Message, Tp};

/// How a message's partition is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// murmur2 of the record key, as the Java client does.
    Keyed,
    /// The operator's fixed `partition`.
    Fixed(u32),
    /// No key: one partition per topic for the whole batch (the Java
    /// client's "sticky" choice), so unkeyed records travel together.
    Sticky,
}

/// Puts each message whose topic is known in its partition's queue;
/// returns those whose topic is not ready yet.
pub(crate) fn place(
    sticky_seed: u64,
    cluster: &mut Cluster,
    messages: &[Message],
    unplaced: Vec<usize>,
    queues: &mut BTreeMap<Tp, Vec<usize>>,
    outcomes: &mut Vec<(usize, Outcome)>,
    reason: &mut HashMap<usize, String>,
) -> Vec<usize> {
    let mut names: Vec<&str> = unplaced
        .iter()
        .map(|&m| messages[m].topic.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let states = match cluster.topics(&names) {
        Ok(states) => states,
        Err(e) => {
            let why = format!("cannot read metadata: {e}");
            for &m in &unplaced {
                reason.insert(m, why.clone());
            }
            return unplaced;
        }
    };
    let states: HashMap<&str, TopicState> = names.iter().copied().zip(states).collect();
    let mut sticky: HashMap<&str, i32> = HashMap::new();
    let mut left = Vec::new();
    for m in unplaced {
        let message = &messages[m];
        let topic = match &states[message.topic.as_str()] {
            TopicState::Ready(topic) => topic,
            TopicState::Missing(code) => {
                outcomes.push((
                    message.index,
                    Outcome::reject(format!(
                        "Kafka: topic {:?}: {code}: it does not exist and the broker did not create it",
                        message.topic
                    )),
                ));
                continue;
            }
            TopicState::Unavailable(why) => {
                reason.insert(
                    m,
                    format!("topic {:?} is not available: {why}", message.topic),
                );
                cluster.mark_stale();
                left.push(m);
                continue;
            }
        };
        let count = topic.leaders.len() as u32;
        let partition = match &message.placement {
            Placement::Fixed(p) if *p >= count => {
                outcomes.push((
                    message.index,
                    Outcome::reject(format!(
                        "Kafka: topic {:?} has {count} partitions; `partition` {p} does not exist",
                        message.topic
                    )),
                ));
                continue;
            }
            Placement::Fixed(p) => *p as i32,
            Placement::Keyed => match &message.key {
                Some(key) => murmur2::partition_for(key, count) as i32,
                None => sticky_partition(sticky_seed, &mut sticky, message, &topic.leaders),
            },
            Placement::Sticky => {
                sticky_partition(sticky_seed, &mut sticky, message, &topic.leaders)
            }
        };
        queues
            .entry((message.topic.clone(), partition))
            .or_default()
            .push(m);
    }
    left
}

fn sticky_partition<'a>(
    sticky_seed: u64,
    chosen: &mut HashMap<&'a str, i32>,
    message: &'a Message,
    leaders: &[Option<i32>],
) -> i32 {
    *chosen.entry(message.topic.as_str()).or_insert_with(|| {
        let count = leaders.len();
        let start = (sticky_seed % count as u64) as usize;
        // A partition with a leader, if there is one.
        (0..count)
            .map(|i| (start + i) % count)
            .find(|&p| leaders[p].is_some())
            .unwrap_or(start) as i32
    })
}
