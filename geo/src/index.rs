//! The search tree of a GeoIP database flattened into sorted address ranges, one index
//! per address family, so that a lookup touches a few cache lines instead of walking a
//! chain of up to 32 (IPv4) or 128 (IPv6) tree nodes.
//!
//! Why: the walk is a chain of dependent reads through an 8 MB tree (DB-IP Lite country).
//! In the serving process, where sockets, HTTP parsing and the answer evict it from the
//! caches, it measured ~1.1 µs per lookup under `scripts/bench-locate` (the largest cost
//! of `GET /v1/locate` after the request itself; IPv6 walks ~1.8 µs), against ~200-300 ns
//! in a tight loop; and each walk's scattered reads evict what the rest of the request
//! needs. An index lookup is one read in a bucket table, a binary search among the few
//! ranges of the address's bucket (one or two cache lines) and, for IPv6 in dense parts
//! of the address space, one to three reads of 1 KB sub-tables.
//!
//! The indexes are exact, not caches: they are built from the walk of every network of
//! the tree (with the networks that have no data), in address order, so every address
//! falls in the range of exactly the network a tree lookup finds; adjacent networks with
//! the same record are merged, which changes no answer. What an index cannot express, it
//! sends back to the tree ([`Found::Walk`]): for IPv6, the /64s holding networks longer
//! than /64 (keys are the top 64 bits) and the parts of the space the walk does not
//! yield (the IPv4 subtree `::/96` and its aliases such as `::ffff:0:0/96` and
//! `2002::/16`). When the IPv4 networks do not tile the IPv4 space (a database without an
//! IPv4 subtree), there is no IPv4 index and IPv4 lookups walk the tree.
//!
//! Size (DB-IP Lite: 356k IPv4 and 346k IPv6 ranges after merging): 8 bytes per IPv4
//! range and 12 per IPv6 range, plus a bucket table of at most 4 MB per family and the
//! IPv6 sub-tables (~1.7 MB): ~15 MB in all, beside the 8 MB file.

/// What an index says about an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// The tree has no data there.
    NoData,
    /// The record at this data offset.
    Offset(usize),
    /// Not indexed here: walk the tree.
    Walk,
}

/// Range values: a data offset, or one of these.
const NO_DATA: u32 = u32::MAX;
const WALK: u32 = u32::MAX - 1;

fn found(value: u32) -> Found {
    match value {
        NO_DATA => Found::NoData,
        WALK => Found::Walk,
        offset => Found::Offset(offset as usize),
    }
}

/// A data offset as a range value (`None`: too large to index).
fn value_of(offset: Option<usize>) -> Option<u32> {
    match offset {
        None => Some(NO_DATA),
        Some(o) => u32::try_from(o).ok().filter(|&o| o < WALK),
    }
}

/// At most this many bits index a bucket table: 1M buckets, a 4 MB table. About two
/// buckets per range keeps nearly every bucket to a few ranges, one or two cache lines.
/// Measured for IPv4 under cache pressure (DB-IP Lite, the benchmark's addresses, random
/// reads of a 64 MB buffer between lookups): extra cost over the pressure alone ~120 ns
/// with /20 buckets, ~160 ns with /16 or /18, ~430 ns for the tree walk.
const MAX_BUCKET_BITS: u32 = 20;

/// Bucket bits for `ranges` ranges: about two buckets per range, between 8 and
/// [`MAX_BUCKET_BITS`] (a small database gets a small table).
fn bucket_bits(ranges: usize) -> u32 {
    (usize::BITS - ranges.leading_zeros() + 1).clamp(8, MAX_BUCKET_BITS)
}

/// The IPv4 ranges: a bucket table over the top bits, then a binary search among the
/// ranges starting in the address's bucket, each holding its value beside its start.
#[derive(Debug)]
pub(crate) struct Ipv4Index {
    /// Per bucket (and one past the last): index in `ranges` of the first range
    /// starting in it.
    buckets: Box<[u32]>,
    /// Buckets are /`bucket_bits` networks.
    bucket_bits: u32,
    /// Each range's first address (high 32 bits) and value (low 32 bits), by address;
    /// the first starts at 0.0.0.0.
    ranges: Box<[u64]>,
}

impl Ipv4Index {
    pub(crate) fn find(&self, ip: u32) -> Found {
        let bucket = (ip >> (32 - self.bucket_bits)) as usize;
        let (first, end) = (
            self.buckets[bucket] as usize,
            self.buckets[bucket + 1] as usize,
        );
        // The last range starting at or before `ip`: in the bucket, or the one before it
        // (range 0 starts at 0.0.0.0, so for bucket 0 it is always in the bucket).
        let n = self.ranges[first..end].partition_point(|&range| (range >> 32) as u32 <= ip);
        found(self.ranges[(first + n).saturating_sub(1)] as u32)
    }

    /// The first address of every range.
    #[cfg(test)]
    pub(crate) fn starts(&self) -> impl Iterator<Item = u32> + '_ {
        self.ranges.iter().map(|r| (r >> 32) as u32)
    }

    /// Every range's start and whether it has the same value as the one before.
    #[cfg(test)]
    pub(crate) fn merged(&self) -> bool {
        self.ranges
            .windows(2)
            .all(|w| (w[0] >> 32) < (w[1] >> 32) && w[0] as u32 != w[1] as u32)
    }
}

/// Collects the walk's IPv4 networks, in walk order, into an [`Ipv4Index`].
#[derive(Debug, Default)]
pub(crate) struct Ipv4IndexBuilder {
    ranges: Vec<u64>,
    /// First address not covered yet (2^32 once the space is tiled).
    next: u64,
    /// A network out of order, overlapping or with an offset too large: no index.
    broken: bool,
}

impl Ipv4IndexBuilder {
    pub(crate) fn push(&mut self, start: u32, prefix: u8, offset: Option<usize>) {
        let Some(value) = value_of(offset) else {
            self.broken = true;
            return;
        };
        if u64::from(start) != self.next || prefix > 32 {
            self.broken = true;
            return;
        }
        self.next = u64::from(start) + (1u64 << (32 - u32::from(prefix)));
        if self.ranges.last().map(|&r| r as u32) != Some(value) {
            self.ranges.push(u64::from(start) << 32 | u64::from(value));
        }
    }

    pub(crate) fn build(self) -> Option<Ipv4Index> {
        if self.broken || self.next != 1u64 << 32 {
            return None;
        }
        let bits = bucket_bits(self.ranges.len());
        let mut buckets = Vec::with_capacity((1 << bits) + 1);
        let mut i = 0usize;
        for bucket in 0..=(1u64 << bits) {
            while i < self.ranges.len() && self.ranges[i] >> 32 < bucket << (32 - bits) {
                i += 1;
            }
            buckets.push(u32::try_from(i).ok()?);
        }
        Some(Ipv4Index {
            buckets: buckets.into_boxed_slice(),
            bucket_bits: bits,
            ranges: self.ranges.into_boxed_slice(),
        })
    }
}

/// The IPv6 ranges, keyed by the top 64 bits of their first address. IPv6 networks
/// crowd into a few parts of the space (a quarter of DB-IP Lite's are in `2001::/16`), so
/// a flat bucket table would leave huge buckets there: a bucket with more than
/// [`Ipv6Index::LEAF`] ranges gets a sub-table of 256 entries over the next 8 bits,
/// recursively (DB-IP Lite: ~1,700 sub-tables, at most 4 levels below the root).
#[derive(Debug)]
pub(crate) struct Ipv6Index {
    /// The root table (2^`root_bits` entries), then the sub-tables (256 entries each).
    /// An entry is [`Ipv6Index::TABLE`] | the index of a sub-table's first entry, or a
    /// leaf: the number of ranges starting in its part of the space (high 8 bits) and
    /// the index of the first of them (low 24 bits).
    tables: Box<[u32]>,
    root_bits: u32,
    /// First key of each range, ascending; the first is 0.
    keys: Box<[u64]>,
    /// Each range's value.
    values: Box<[u32]>,
}

impl Ipv6Index {
    const TABLE: u32 = 1 << 31;
    /// Most ranges a leaf holds (above, it is split by a sub-table).
    const LEAF: usize = 32;

    /// What the index says about the address whose top 64 bits are `key`.
    pub(crate) fn find(&self, key: u64) -> Found {
        let mut shift = 64 - self.root_bits;
        let mut entry = self.tables[(key >> shift) as usize];
        while entry & Ipv6Index::TABLE != 0 {
            // Sub-tables are only made while 8 more bits remain.
            shift -= 8;
            let slot = ((key >> shift) & 0xff) as usize;
            entry = self.tables[(entry & !Ipv6Index::TABLE) as usize + slot];
        }
        let first = (entry & 0x00ff_ffff) as usize;
        let count = (entry >> 24) as usize;
        // The last range starting at or before `key`: in the leaf, or the one before it
        // (range 0 starts at key 0, so the leaf holding key 0 has it).
        let n = self.keys[first..first + count].partition_point(|&k| k <= key);
        found(self.values[(first + n).saturating_sub(1)])
    }

    /// The first key of every range.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> &[u64] {
        &self.keys
    }

    /// How many sub-tables, and how many ranges are sent to the tree.
    #[cfg(test)]
    pub(crate) fn shape(&self) -> (usize, usize) {
        let tables = (self.tables.len() - (1 << self.root_bits)) / 256;
        (tables, self.values.iter().filter(|&&v| v == WALK).count())
    }
}

/// Collects the walk's IPv6 networks, in walk order, into an [`Ipv6Index`].
#[derive(Debug, Default)]
pub(crate) struct Ipv6IndexBuilder {
    keys: Vec<u64>,
    values: Vec<u32>,
    /// First address not covered yet.
    next: u128,
    /// The whole space is covered (`next` wrapped to 0 after the last network).
    done: bool,
    /// A network out of order or overlapping, or an offset too large: no index.
    broken: bool,
}

impl Ipv6IndexBuilder {
    fn append(&mut self, key: u64, value: u32) {
        match (self.keys.last(), self.values.last_mut()) {
            // Same value: the previous range goes on.
            (_, Some(last)) if *last == value => {}
            // Two values in one /64: only the tree can tell them apart.
            (Some(&k), Some(last)) if k == key => *last = WALK,
            _ => {
                self.keys.push(key);
                self.values.push(value);
            }
        }
    }

    pub(crate) fn push(&mut self, start: u128, prefix: u8, offset: Option<usize>) {
        let Some(value) = value_of(offset) else {
            self.broken = true;
            return;
        };
        if self.done || start < self.next || prefix > 128 {
            self.broken = true;
            return;
        }
        if start > self.next {
            // Not yielded by the walk (the IPv4 subtree and its aliases): the tree's.
            self.append((self.next >> 64) as u64, WALK);
        }
        // Longer than /64: several networks may share the /64; the tree's.
        let value = if prefix > 64 { WALK } else { value };
        self.append((start >> 64) as u64, value);
        let size = 1u128.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
        match start.checked_add(size) {
            Some(next) if size > 0 => self.next = next,
            // The network reaches the end of the space (or is ::/0).
            _ => self.done = true,
        }
    }

    pub(crate) fn build(mut self) -> Option<Ipv6Index> {
        if self.broken {
            return None;
        }
        if !self.done {
            self.append((self.next >> 64) as u64, WALK);
        }
        if self.keys.first() != Some(&0) || self.keys.len() >= 1 << 24 {
            return None;
        }
        let root_bits = bucket_bits(self.keys.len());
        let mut tables = vec![0u32; 1 << root_bits];
        self.fill(&mut tables, 0, 0, 0, root_bits)?;
        Some(Ipv6Index {
            tables: tables.into_boxed_slice(),
            root_bits,
            keys: self.keys.into_boxed_slice(),
            values: self.values.into_boxed_slice(),
        })
    }

    /// Fills the table at `at` covering the keys from `low` (a multiple of the table's
    /// span, after `depth` bits) with 2^`bits` entries, making sub-tables where needed.
    fn fill(
        &self,
        tables: &mut Vec<u32>,
        at: usize,
        low: u64,
        depth: u32,
        bits: u32,
    ) -> Option<()> {
        let width = 1u128 << (64 - depth - bits);
        let mut first = self
            .keys
            .partition_point(|&k| u128::from(k) < u128::from(low));
        for slot in 0..(1usize << bits) {
            let start = u128::from(low) + slot as u128 * width;
            let end = start + width;
            let mut past = first;
            while past < self.keys.len() && u128::from(self.keys[past]) < end {
                past += 1;
            }
            let count = past - first;
            if count > Ipv6Index::LEAF && depth + bits + 8 <= 64 {
                let table = tables.len();
                tables.resize(table + 256, 0);
                tables[at + slot] = Ipv6Index::TABLE | u32::try_from(table).ok()?;
                self.fill(tables, table, start as u64, depth + bits, 8)?;
            } else {
                // Few ranges (at most 16 once a table spans 16 keys): a leaf.
                let count = u32::try_from(count).ok().filter(|&c| c < 256)?;
                tables[at + slot] = count << 24 | u32::try_from(first).ok()?;
            }
            first = past;
        }
        Some(())
    }
}
