//! The idempotent producer's session (producer id, epoch, the next
//! sequence number of each partition) and the `Produce` requests numbered
//! by it.

use std::collections::{BTreeMap, HashMap};

use bytes::BytesMut;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, ProduceRequest, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::cluster::Cluster;
use crate::errors::code_name;
use crate::produce::{Chunk, Message, Settings, Tp};

/// The idempotent producer's session.
pub(crate) struct Session {
    pub id: i64,
    pub epoch: i16,
    pub next_sequence: HashMap<Tp, i32>,
}

/// The `Produce` request for `chunks`, all led by one broker: each chunk one
/// v2 record batch (magic 2, CRC-32C, uncompressed), numbered from the
/// session's next sequence number for its partition (none without a session).
pub(crate) fn produce_request(
    settings: &Settings,
    session: Option<&Session>,
    messages: &[Message],
    chunks: &[Chunk],
) -> ProduceRequest {
    let mut topics: BTreeMap<&str, Vec<PartitionProduceData>> = BTreeMap::new();
    for chunk in chunks {
        let (id, epoch, base) = match session {
            Some(s) => (
                s.id,
                s.epoch,
                s.next_sequence.get(&chunk.tp).copied().unwrap_or(0),
            ),
            None => (-1, -1, -1),
        };
        let records: Vec<Record> = chunk
            .members
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                let message = &messages[m];
                Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: id,
                    producer_epoch: epoch,
                    timestamp_type: TimestampType::Creation,
                    offset: i as i64,
                    sequence: if base < 0 {
                        -1
                    } else {
                        base.wrapping_add(i as i32) & i32::MAX
                    },
                    timestamp: message.timestamp_ms,
                    key: message.key.clone(),
                    value: Some(message.value.clone()),
                    headers: message
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), Some(v.clone())))
                        .collect(),
                }
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        // Encoding uncompressed records into memory cannot fail.
        RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encoding a record batch");
        topics.entry(chunk.tp.0.as_str()).or_default().push(
            PartitionProduceData::default()
                .with_index(chunk.tp.1)
                .with_records(Some(buf.freeze())),
        );
    }
    ProduceRequest::default()
        .with_acks(settings.acks)
        .with_timeout_ms(settings.request_timeout.as_millis().min(i32::MAX as u128) as i32)
        .with_topic_data(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(name.to_owned())))
                        .with_partition_data(partitions)
                })
                .collect(),
        )
}

/// A new producer id and epoch from any broker.
pub(crate) fn init_producer_id(cluster: &mut Cluster) -> Result<Session, String> {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    match cluster.call_any(&request, ApiKey::InitProducerId) {
        Ok(a) if a.error_code == 0 => Ok(Session {
            id: a.producer_id.0,
            epoch: a.producer_epoch,
            next_sequence: HashMap::new(),
        }),
        Ok(a) => Err(format!(
            "InitProducerId (the idempotent producer's id) was refused: {}",
            code_name(a.error_code)
        )),
        Err(e) => Err(format!("InitProducerId failed: {e}")),
    }
}
