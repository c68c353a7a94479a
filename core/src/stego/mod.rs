//! STEGO (Hamilton et al., ICLR 2022) on a frozen backbone's tokens, as released
//! (mhamilton723/STEGO, src/modules.py): the segmentation head (`head`), the contrastive
//! correlation loss with its three terms (`loss`), and the draws training makes: sample
//! coordinates, negative permutations and KNN partners, each from a caller-seeded RNG so
//! that a step's draws are a pure function of (seed, epoch, step).
//! `../shared/reference/stego.md` states the method; settings keep the release's names
//! (`stabalize` included) so a config moves over field by field.

pub mod head;
pub mod loss;
#[cfg(test)]
mod parity;
pub mod probe;

pub use head::{StegoHead, StegoHeadConfig};
pub use loss::{correspondence_loss, CorrHistogram, CorrLossConfig, Samples, Terms};

use rand::Rng;

#[derive(Debug, thiserror::Error)]
pub enum StegoError {
    /// A setting out of range; `field` is the release's name for it.
    #[error("`{field}`: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Shape(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// The KNN partner of an image, as the release's data set draws it: uniformly among ranks
/// 1..=`num_neighbors` of its neighbour list (rank 0, the image itself, is never drawn).
/// `None` when the list holds fewer than `num_neighbors + 1` entries or `num_neighbors` is 0.
pub fn draw_partner<R: Rng>(neighbours: &[u32], num_neighbors: usize, rng: &mut R) -> Option<u32> {
    if num_neighbors == 0 || neighbours.len() <= num_neighbors {
        return None;
    }
    Some(neighbours[rng.random_range(1..=num_neighbors)])
}

/// The release's `super_perm`: a random permutation of 0..n whose fixed points are moved by
/// +1 (mod n), so that no image is its own negative (for n > 1). As released, moving a fixed
/// point can repeat an index: the result is a map, not always a permutation.
pub fn super_perm<R: Rng>(n: usize, rng: &mut R) -> Vec<i64> {
    let mut p: Vec<i64> = (0..n as i64).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        p.swap(i, j);
    }
    for (i, v) in p.iter_mut().enumerate() {
        if *v == i as i64 {
            *v = (*v + 1) % n as i64;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn partners_come_from_ranks_1_to_num_neighbors() {
        let nn = [9u32, 3, 4, 5, 6, 7, 8];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(draw_partner(&nn, 3, &mut rng).unwrap());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(draw_partner(&nn, 7, &mut rng), None);
        assert_eq!(draw_partner(&nn, 0, &mut rng), None);
        assert!(draw_partner(&nn, 6, &mut rng).is_some());
    }

    #[test]
    fn super_perm_has_no_fixed_points_and_repeats_with_its_seed() {
        for n in [2usize, 3, 16] {
            for seed in 0..20 {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                let p = super_perm(n, &mut rng);
                assert!(p
                    .iter()
                    .enumerate()
                    .all(|(i, &v)| v != i as i64 && v < n as i64));
                let mut again = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                assert_eq!(p, super_perm(n, &mut again));
            }
        }
        assert_eq!(
            super_perm(1, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0)),
            [0]
        );
    }
}
