//! Open-addressing table from lattice keys (the first d integer coordinates of a vertex on
//! the permutohedral lattice; the last one is implied, the coordinates sum to zero) to
//! dense vertex ids, handed out in insertion order so the lattice is the same on every run.

/// Marks an empty slot.
const EMPTY: u32 = u32::MAX;

pub(crate) struct KeyTable<const D: usize> {
    /// Vertex v's key.
    keys: Vec<[i32; D]>,
    /// Slots (a power of two of them) holding vertex ids or `EMPTY`.
    slots: Vec<u32>,
    /// 64 - log2(slots): a hash's top bits pick its slot.
    shift: u32,
}

impl<const D: usize> KeyTable<D> {
    pub(crate) fn new(expected: usize) -> Self {
        let cap = (2 * expected.max(8)).next_power_of_two();
        Self {
            keys: Vec::with_capacity(expected),
            slots: vec![EMPTY; cap],
            shift: 64 - cap.trailing_zeros(),
        }
    }

    /// Vertices so far.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn key(&self, v: usize) -> &[i32; D] {
        &self.keys[v]
    }

    /// The home slot of `key` among `1 << (64 - shift)`: the top bits of the hash, which
    /// depend on every bit of every coordinate (Fibonacci hashing; the low bits of a
    /// product depend only on its factors' low bits).
    #[inline(always)]
    fn home(key: &[i32; D], shift: u32) -> usize {
        (Self::hash(key) >> shift) as usize
    }

    /// Multiply-xorshift over the coordinates, then a last multiply whose top bits pick the
    /// slot.
    #[inline(always)]
    fn hash(key: &[i32; D]) -> u64 {
        let mut h: u64 = 0;
        for &k in key {
            h = (h ^ k as u32 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            h ^= h >> 32;
        }
        h.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// The slot holding `key`, or the empty slot where it would go, from its hash.
    #[inline(always)]
    fn slot(&self, key: &[i32; D], h: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut s = (h >> self.shift) as usize;
        loop {
            let v = self.slots[s];
            if v == EMPTY || self.keys[v as usize] == *key {
                return s;
            }
            s = (s + 1) & mask;
        }
    }

    /// The id of `key`, if present.
    #[inline]
    pub(crate) fn find(&self, key: &[i32; D]) -> Option<u32> {
        match self.slots[self.slot(key, Self::hash(key))] {
            EMPTY => None,
            v => Some(v),
        }
    }

    /// The id of `key`, inserting it when new.
    #[inline]
    pub(crate) fn insert(&mut self, key: &[i32; D]) -> u32 {
        let s = self.slot(key, Self::hash(key));
        if self.slots[s] != EMPTY {
            return self.slots[s];
        }
        let id = self.len() as u32;
        self.keys.push(*key);
        self.slots[s] = id;
        // Keep the load at most one half, so probes stay short.
        if 2 * self.len() >= self.slots.len() {
            self.grow();
        }
        id
    }

    fn grow(&mut self) {
        let mut slots = vec![EMPTY; self.slots.len() * 2];
        let mask = slots.len() - 1;
        self.shift -= 1;
        for (v, key) in self.keys.iter().enumerate() {
            let mut s = Self::home(key, self.shift);
            while slots[s] != EMPTY {
                s = (s + 1) & mask;
            }
            slots[s] = v as u32;
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
        let mut t = KeyTable::<3>::new(1);
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
