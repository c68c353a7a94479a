//! Resizing and cropping as the release does it, and parallel loading.
//!
//! The release (torchvision on PIL images) resizes the shorter side to a
//! target with the longer side `int(target * long / short)`, bilinear for
//! images (PIL's, which widens the kernel when shrinking) and nearest for
//! labels, then crops a centred square at `round((len - target) / 2)` with
//! Python's `round` (halves to even). Evaluation uses 320, training 640.
//! `fast_image_resize`'s convolution resizer follows PIL's filters.

use std::sync::atomic::{AtomicUsize, Ordering};

use fast_image_resize as fr;
use image::RgbImage;

use super::{DataError, Dataset, Mask};

/// Side of the evaluation crops (images and labels).
pub const EVAL_RES: u32 = 320;
/// Side of the training crops.
pub const TRAIN_SIZE: u32 = 640;
/// Longest side a resize may produce: guards against absurd aspect ratios.
const MAX_SIDE: u32 = 16384;

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot resize an empty {width}x{height} image")]
    Empty { width: u32, height: u32 },
    #[error("the target side must be at least 1")]
    ZeroSide,
    #[error("a {width}x{height} image resized to a shorter side of {side} would exceed {MAX_SIDE} pixels")]
    TooElongated { width: u32, height: u32, side: u32 },
    #[error("resize failed: {0}")]
    Resize(String),
}

/// Size after resizing the shorter side to `side` (torchvision's rule).
pub fn resized_size(width: u32, height: u32, side: u32) -> Result<(u32, u32), PreprocessError> {
    if width == 0 || height == 0 {
        return Err(PreprocessError::Empty { width, height });
    }
    if side == 0 {
        return Err(PreprocessError::ZeroSide);
    }
    // Integer floor equals Python's int() of the float quotient here: the
    // quotient of two small integers is never within an ulp below an integer.
    let scale = |long: u32, short: u32| u64::from(side) * u64::from(long) / u64::from(short);
    let (w, h) = if width <= height {
        (u64::from(side), scale(height, width))
    } else {
        (scale(width, height), u64::from(side))
    };
    if w > u64::from(MAX_SIDE) || h > u64::from(MAX_SIDE) {
        return Err(PreprocessError::TooElongated {
            width,
            height,
            side,
        });
    }
    Ok((w as u32, h as u32))
}

/// Offset of a centred crop of `side` in `len`: `round((len - side) / 2)`
/// with halves to even, as Python's `round`.
pub fn centre_offset(len: u32, side: u32) -> u32 {
    let d = len.saturating_sub(side);
    let half = d / 2;
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Bilinear resize (PIL-style convolution).
pub fn resize_rgb(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage, PreprocessError> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(PreprocessError::Empty {
            width: w,
            height: h,
        });
    }
    if (w, h) == (width, height) {
        return Ok(img.clone());
    }
    let src = fr::images::ImageRef::new(w, h, img.as_raw(), fr::PixelType::U8x3)
        .map_err(|e| PreprocessError::Resize(e.to_string()))?;
    let mut dst = fr::images::Image::new(width, height, fr::PixelType::U8x3);
    let opts =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    fr::Resizer::new()
        .resize(&src, &mut dst, &opts)
        .map_err(|e| PreprocessError::Resize(e.to_string()))?;
    RgbImage::from_raw(width, height, dst.into_vec())
        .ok_or_else(|| PreprocessError::Resize("output buffer has the wrong size".into()))
}

/// Source index of each target index for nearest-neighbour resizing, as
/// PIL: `floor((i + 0.5) * src / dst)`.
fn nearest_index(dst: u32, src: u32) -> Vec<usize> {
    (0..u64::from(dst))
        .map(|i| {
            let s = (2 * i + 1) * u64::from(src) / (2 * u64::from(dst));
            s.min(u64::from(src) - 1) as usize
        })
        .collect()
}

/// Nearest-neighbour resize of a mask (values are never blended).
pub fn resize_mask(mask: &Mask, width: u32, height: u32) -> Result<Mask, PreprocessError> {
    let (w, h) = (mask.width, mask.height);
    if w == 0 || h == 0 || mask.data.len() != w as usize * h as usize {
        return Err(PreprocessError::Empty {
            width: w,
            height: h,
        });
    }
    let xs = nearest_index(width, w);
    let ys = nearest_index(height, h);
    let mut data = Vec::with_capacity(width as usize * height as usize);
    for &y in &ys {
        let row = &mask.data[y * w as usize..(y + 1) * w as usize];
        data.extend(xs.iter().map(|&x| row[x]));
    }
    Ok(Mask {
        width,
        height,
        data,
    })
}

fn crop_rgb(img: &RgbImage, left: u32, top: u32, side: u32) -> RgbImage {
    image::imageops::crop_imm(img, left, top, side, side).to_image()
}

fn crop_mask(mask: &Mask, left: u32, top: u32, side: u32) -> Mask {
    let (side_w, side_h) = (
        side.min(mask.width.saturating_sub(left)),
        side.min(mask.height.saturating_sub(top)),
    );
    let mut data = Vec::with_capacity(side_w as usize * side_h as usize);
    for y in top..top + side_h {
        let start = y as usize * mask.width as usize + left as usize;
        data.extend_from_slice(&mask.data[start..start + side_w as usize]);
    }
    Mask {
        width: side_w,
        height: side_h,
        data,
    }
}

/// Shorter side to `side` (bilinear), then the centred `side` x `side` crop.
pub fn resize_centre_crop(img: &RgbImage, side: u32) -> Result<RgbImage, PreprocessError> {
    let (w, h) = resized_size(img.width(), img.height(), side)?;
    let r = resize_rgb(img, w, h)?;
    Ok(crop_rgb(
        &r,
        centre_offset(w, side),
        centre_offset(h, side),
        side,
    ))
}

/// The same for a mask, nearest-neighbour: the crop matches the image's.
pub fn resize_centre_crop_mask(mask: &Mask, side: u32) -> Result<Mask, PreprocessError> {
    let (w, h) = resized_size(mask.width, mask.height, side)?;
    let r = resize_mask(mask, w, h)?;
    Ok(crop_mask(
        &r,
        centre_offset(w, side),
        centre_offset(h, side),
        side,
    ))
}

/// Evaluation input: `res` x `res` (the release: 320).
pub fn eval_image(img: &RgbImage, res: u32) -> Result<RgbImage, PreprocessError> {
    resize_centre_crop(img, res)
}

/// Evaluation labels, aligned with [`eval_image`].
pub fn eval_mask(mask: &Mask, res: u32) -> Result<Mask, PreprocessError> {
    resize_centre_crop_mask(mask, res)
}

/// Training base image: `size` x `size` (the release: 640) before the
/// augmentations.
pub fn train_image(img: &RgbImage, size: u32) -> Result<RgbImage, PreprocessError> {
    resize_centre_crop(img, size)
}

/// Item `i` of `ds` preprocessed for evaluation: image and (if any) mask.
pub fn load_eval(
    ds: &dyn Dataset,
    i: usize,
    res: u32,
) -> Result<(RgbImage, Option<Mask>), DataError> {
    let wrap = |source| DataError::Preprocess {
        id: ds.id(i),
        source,
    };
    let img = eval_image(&ds.image(i)?, res).map_err(wrap)?;
    let mask = match ds.mask(i)? {
        Some(m) => Some(eval_mask(&m, res).map_err(wrap)?),
        None => None,
    };
    Ok((img, mask))
}

/// Cores to use when the caller has no setting.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `f` over `items` on up to `threads` scoped threads (std::thread::scope;
/// each takes the next item as it finishes one), results in item order.
/// A panic in `f` is re-raised here.
pub fn par_map<I, R, F>(items: &[I], threads: usize, f: F) -> Vec<R>
where
    I: Sync,
    R: Send,
    F: Fn(&I) -> R + Sync,
{
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let parts: Vec<Vec<(usize, R)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        out.push((i, f(item)));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut slots: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    for (i, r) in parts.into_iter().flatten() {
        slots[i] = Some(r);
    }
    // Every index was taken exactly once, so no slot is empty.
    slots.into_iter().flatten().collect()
}

/// Decodes (and whatever else `f` does) the items `indices` of `ds` on up
/// to `threads` threads; results in the order of `indices`, one per index.
pub fn load_batch<T, E, F>(
    ds: &dyn Dataset,
    indices: &[usize],
    threads: usize,
    f: F,
) -> Vec<Result<T, E>>
where
    T: Send,
    E: Send,
    F: Fn(&dyn Dataset, usize) -> Result<T, E> + Sync,
{
    par_map(indices, threads, |&i| f(ds, i))
}

#[cfg(test)]
mod tests {
    use super::super::{from_yaml, Split};
    use super::*;
    use std::path::Path;

    #[test]
    fn sizes_follow_torchvision() {
        assert_eq!(resized_size(480, 360, 320).unwrap(), (426, 320));
        assert_eq!(resized_size(360, 480, 320).unwrap(), (320, 426));
        assert_eq!(resized_size(640, 427, 640).unwrap(), (959, 640));
        assert_eq!(resized_size(2048, 1024, 320).unwrap(), (640, 320));
        assert_eq!(resized_size(100, 100, 320).unwrap(), (320, 320));
        assert!(resized_size(0, 5, 320).is_err());
        assert!(resized_size(5, 5, 0).is_err());
        assert!(matches!(
            resized_size(1, 1000, 320),
            Err(PreprocessError::TooElongated { .. })
        ));
    }

    #[test]
    fn centre_offset_rounds_halves_to_even() {
        assert_eq!(centre_offset(426, 320), 53);
        assert_eq!(centre_offset(321, 320), 0); // round(0.5) = 0
        assert_eq!(centre_offset(323, 320), 2); // round(1.5) = 2
        assert_eq!(centre_offset(325, 320), 2); // round(2.5) = 2
        assert_eq!(centre_offset(327, 320), 4); // round(3.5) = 4
        assert_eq!(centre_offset(320, 320), 0);
        assert_eq!(centre_offset(959, 640), 160); // round(159.5) = 160
    }

    #[test]
    fn eval_and_train_sizes() {
        let img = RgbImage::from_pixel(480, 360, image::Rgb([10, 200, 30]));
        let e = eval_image(&img, EVAL_RES).unwrap();
        assert_eq!(e.dimensions(), (320, 320));
        // A flat image stays flat through the filter.
        assert!(e.pixels().all(|p| p.0 == [10, 200, 30]));
        assert_eq!(
            train_image(&img, TRAIN_SIZE).unwrap().dimensions(),
            (640, 640)
        );
        let tall = RgbImage::new(300, 500);
        assert_eq!(eval_image(&tall, 320).unwrap().dimensions(), (320, 320));
    }

    #[test]
    fn crop_is_centred() {
        // A 6x4 image whose columns are numbered; side 4 keeps 4 of 6
        // columns at offset round(1.0) = 1.
        let img = RgbImage::from_fn(6, 4, |x, _| image::Rgb([x as u8, 0, 0]));
        let c = resize_centre_crop(&img, 4).unwrap();
        let cols: Vec<u8> = (0..4).map(|x| c.get_pixel(x, 0).0[0]).collect();
        assert_eq!(cols, [1, 2, 3, 4]);
    }

    #[test]
    fn masks_use_nearest_neighbour() {
        let m = Mask {
            width: 4,
            height: 2,
            data: vec![0, 1, 2, 3, 4, 5, 6, 7],
        };
        // Halving picks floor((i + 0.5) * 2) = 1, 3 along x; row 1 along y.
        let half = resize_mask(&m, 2, 1).unwrap();
        assert_eq!(half.data, [5, 7]);
        // Doubling repeats each value.
        let double = resize_mask(&m, 8, 4).unwrap();
        assert_eq!(&double.data[..8], &[0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(&double.data[24..], &[4, 4, 5, 5, 6, 6, 7, 7]);
        // Only input values ever appear, the ignore index included.
        let big = Mask {
            width: 480,
            height: 360,
            data: (0..480 * 360)
                .map(|i| if i % 7 == 0 { 255 } else { (i % 11) as u16 })
                .collect(),
        };
        let e = eval_mask(&big, 320).unwrap();
        assert_eq!((e.width, e.height), (320, 320));
        assert!(e.data.iter().all(|&v| v == 255 || v < 11));
        // The crop matches the image's: column 0 of the result is source
        // column nearest(53) = floor(53.5 * 480 / 426) = 60.
        let cols = Mask {
            width: 480,
            height: 360,
            data: (0..480 * 360).map(|i| (i % 480) as u16).collect(),
        };
        let e = eval_mask(&cols, 320).unwrap();
        assert_eq!(e.data[0], 60);
        assert_eq!(e.data[319], ((372.5f64 * 480.0 / 426.0).floor()) as u16);
    }

    #[test]
    fn bad_masks_are_errors_not_panics() {
        let m = Mask {
            width: 3,
            height: 3,
            data: vec![0; 4],
        };
        assert!(resize_mask(&m, 2, 2).is_err());
    }

    #[test]
    fn load_batch_keeps_order_and_errors() {
        let ds = from_yaml("kind: synthetic\ntrain_images: 7\n", Path::new("/"))
            .unwrap()
            .open(Split::Train)
            .unwrap();
        let idx = [6, 0, 3, 99, 2];
        let got = load_batch(ds.as_ref(), &idx, 3, |ds, i| load_eval(ds, i, 32));
        assert_eq!(got.len(), 5);
        for (r, &i) in got.iter().zip(&idx) {
            match r {
                Ok((img, m)) => {
                    assert_eq!(img.dimensions(), (32, 32));
                    assert_eq!(*img, eval_image(&ds.image(i).unwrap(), 32).unwrap());
                    assert_eq!(m.as_ref().unwrap().data.len(), 32 * 32);
                }
                Err(e) => {
                    assert_eq!(i, 99);
                    assert!(matches!(e, DataError::Index { index: 99, .. }));
                }
            }
        }
        let ids = load_batch(ds.as_ref(), &idx[..3], 8, |ds, i| Ok::<_, ()>(ds.id(i)));
        assert_eq!(
            ids,
            [
                Ok("train-000006".into()),
                Ok("train-000000".into()),
                Ok("train-000003".into())
            ]
        );
        assert!(load_batch(ds.as_ref(), &[], 4, |_, i| Ok::<_, ()>(i)).is_empty());
    }

    #[test]
    fn par_map_uses_several_threads() {
        let items: Vec<u32> = (0..64).collect();
        let out = par_map(&items, 4, |&x| {
            std::thread::sleep(std::time::Duration::from_millis(1));
            (x * 2, std::thread::current().id())
        });
        assert_eq!(
            out.iter().map(|o| o.0).collect::<Vec<_>>(),
            (0..64).map(|x| x * 2).collect::<Vec<_>>()
        );
        let mut threads: Vec<_> = out.iter().map(|o| format!("{:?}", o.1)).collect();
        threads.sort();
        threads.dedup();
        assert!(threads.len() > 1, "{threads:?}");
    }
}
