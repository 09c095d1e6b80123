//! The Java client's default partitioner for keyed records:
//! `toPositive(murmur2(key)) % partitions`
//! (`org.apache.kafka.clients.producer.internals.BuiltInPartitioner`), so a
//! key lands where a Java, Kafka Streams or librdkafka (`murmur2_random`)
//! producer puts it.

/// `org.apache.kafka.common.utils.Utils.murmur2`, as a signed 32-bit value.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // The length is an `int` in Java: only its low 32 bits take part.
    let mut h = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record among `partitions` (at least 1).
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    // Java's `Utils.toPositive`: clear the sign bit (not `abs`).
    (murmur2(key) as u32 & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of the Java client's own test,
    /// `org.apache.kafka.common.utils.UtilsTest.testMurmur2`.
    #[test]
    fn matches_the_java_client() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key), *want, "{:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partitions_clear_the_sign_bit() {
        // murmur2("21") = -973932308; & 0x7fffffff = 1173551340.
        assert_eq!(
            partition_for(b"21", 1_000_000_007),
            1_173_551_340 % 1_000_000_007
        );
        assert_eq!(partition_for(b"21", 12), 1_173_551_340 % 12);
        assert_eq!(partition_for(b"anything", 1), 0);
    }
}
