//! Open-addressing table from lattice keys (the first d integer coordinates of a vertex on
//! the permutohedral lattice; the last one is implied, the coordinates sum to zero) to
//! dense vertex ids, handed out in insertion order so the lattice is the same on every run.
//!
//! A slot holds the vertex id in its low bits and a tag, more bits of the key's hash, in
//! the bits the ids never need: a probe past another key, or a lookup of an absent key,
//! then mostly stops at the slot without reading the key itself (one cache miss instead
//! of two; the table is far larger than the cache).

/// Marks an empty slot (never a tagged id: ids stay below `(1 << id_bits) - 1`).
const EMPTY: u32 = u32::MAX;

/// Whether two keys are equal, compared lane by lane: keys are built a coordinate at a
/// time on the stack, and a wide load of lanes just stored one by one stalls on store
/// forwarding (what `==` on arrays compiles to).
#[inline(always)]
pub(crate) fn same_key<const D: usize>(a: &[i32; D], b: &[i32; D]) -> bool {
    a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) struct KeyTable<const D: usize> {
    /// Vertex v's key.
    keys: Vec<[i32; D]>,
    /// Slots (a power of two of them) holding tagged vertex ids or `EMPTY`.
    slots: Vec<u32>,
    /// 64 - log2(slots): a hash's top bits pick its slot.
    shift: u32,
    /// Bits of a slot that hold the id; the rest hold the tag.
    id_bits: u32,
}

impl<const D: usize> KeyTable<D> {
    /// A table for about `expected` keys, never more than `most`.
    pub(crate) fn new(expected: usize, most: usize) -> Self {
        let cap = (2 * expected.max(8)).next_power_of_two();
        Self {
            keys: Vec::with_capacity(expected),
            slots: vec![EMPTY; cap],
            shift: 64 - cap.trailing_zeros(),
            id_bits: (usize::BITS - most.leading_zeros()).min(32),
        }
    }

    /// Vertices so far.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn key(&self, v: usize) -> &[i32; D] {
        &self.keys[v]
    }

    /// Multiply-xorshift over the coordinates, then a last multiply whose top bits pick the
    /// slot (Fibonacci hashing: the low bits of a product depend only on its factors' low
    /// bits, the top ones on all).
    #[inline(always)]
    pub(crate) fn hash(key: &[i32; D]) -> u64 {
        let mut h: u64 = 0;
        for &k in key {
            h = (h ^ k as u32 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            h ^= h >> 32;
        }
        h.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// The tag bits of a slot for hash `h` (zero when ids take all 32 bits).
    #[inline(always)]
    fn tag(&self, h: u64) -> u32 {
        ((h >> 8) as u32).checked_shl(self.id_bits).unwrap_or(0)
    }

    #[inline(always)]
    fn id_mask(&self) -> u32 {
        u32::MAX.checked_shr(32 - self.id_bits).unwrap_or(0)
    }

    /// The home slot of hash `h`.
    #[inline(always)]
    pub(crate) fn home(&self, h: u64) -> usize {
        (h >> self.shift) as usize
    }

    /// The slot's content at `s` (to load the home slots of several keys before resolving
    /// any, so that their cache misses overlap).
    #[inline(always)]
    pub(crate) fn peek(&self, s: usize) -> u32 {
        self.slots[s]
    }

    /// The slot holding `key`, or the empty slot where it would go, from its hash.
    #[inline(always)]
    fn slot(&self, key: &[i32; D], h: u64) -> usize {
        let mask = self.slots.len() - 1;
        let (tag, ids) = (self.tag(h), self.id_mask());
        let tags = !ids;
        let mut s = self.home(h);
        loop {
            let v = self.slots[s];
            if v == EMPTY || (v & tags == tag && same_key(&self.keys[(v & ids) as usize], key)) {
                return s;
            }
            s = (s + 1) & mask;
        }
    }

    /// The id of `key` (of hash `h`), if present.
    #[inline(always)]
    pub(crate) fn find_hashed(&self, key: &[i32; D], h: u64) -> Option<u32> {
        match self.slots[self.slot(key, h)] {
            EMPTY => None,
            v => Some(v & self.id_mask()),
        }
    }

    /// The id of `key`, if present (the lattice hashes its keys itself).
    #[cfg(test)]
    pub(crate) fn find(&self, key: &[i32; D]) -> Option<u32> {
        self.find_hashed(key, Self::hash(key))
    }

    /// The id of `key` (of hash `h`), inserting it when new.
    #[inline(always)]
    pub(crate) fn insert_hashed(&mut self, key: &[i32; D], h: u64) -> u32 {
        let s = self.slot(key, h);
        if self.slots[s] != EMPTY {
            return self.slots[s] & self.id_mask();
        }
        let id = self.len() as u32;
        assert!(id < self.id_mask(), "more lattice keys than announced");
        self.keys.push(*key);
        self.slots[s] = id | self.tag(h);
        // Keep the load at most one half, so probes stay short.
        if 2 * self.len() >= self.slots.len() {
            self.grow();
        }
        id
    }

    /// The id of `key`, inserting it when new (the lattice hashes its keys itself).
    #[cfg(test)]
    pub(crate) fn insert(&mut self, key: &[i32; D]) -> u32 {
        self.insert_hashed(key, Self::hash(key))
    }

    fn grow(&mut self) {
        let mut slots = vec![EMPTY; self.slots.len() * 2];
        let mask = slots.len() - 1;
        self.shift -= 1;
        for (v, key) in self.keys.iter().enumerate() {
            let h = Self::hash(key);
            let mut s = self.home(h);
            while slots[s] != EMPTY {
                s = (s + 1) & mask;
            }
            slots[s] = v as u32 | self.tag(h);
        }
        self.slots = slots;
    }

    /// Gives back the keys' spare capacity (growth by doubling leaves up to half unused)
    /// once no more keys come.
    pub(crate) fn shrink(&mut self) {
        self.keys.shrink_to_fit();
    }

    /// Bytes held (for the memory report).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.keys.capacity() * 4 * D + self.slots.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_insertion_and_survive_growth() {
        for most in [1000, 1 << 20, usize::MAX] {
            let mut t = KeyTable::<3>::new(1, most);
            let keys: Vec<[i32; 3]> = (0..1000).map(|i| [i, -i, i * 7 % 13]).collect();
            for (i, k) in keys.iter().enumerate() {
                assert_eq!(t.insert(k), i as u32);
            }
            for (i, k) in keys.iter().enumerate() {
                assert_eq!(t.insert(k), i as u32, "re-insert");
                assert_eq!(t.find(k), Some(i as u32));
            }
            assert_eq!(t.len(), 1000);
            assert_eq!(t.find(&[5, 5, 5]), None);
        }
    }
}
