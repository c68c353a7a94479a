//! File helpers shared by the readers: decoding, listing, colours.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageReader, RgbImage};

use super::{DataError, Skipped};

/// Extensions read as images (masks are PNG only: lossy formats would
/// corrupt labels).
pub(crate) const IMAGE_EXTS: [&str; 3] = ["png", "jpg", "jpeg"];
pub(crate) const MASK_EXTS: [&str; 1] = ["png"];

fn reader(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    // The content decides the format, so a PNG named .jpg still reads.
    ImageReader::open(path)
        .map_err(io)?
        .with_guessed_format()
        .map_err(io)
}

fn decode_err(path: &Path) -> impl FnOnce(image::ImageError) -> DataError + '_ {
    move |source| DataError::Decode {
        path: path.to_path_buf(),
        source,
    }
}

/// Width and height from the file header only.
pub(crate) fn dimensions(path: &Path) -> Result<(u32, u32), DataError> {
    reader(path)?.into_dimensions().map_err(decode_err(path))
}

pub(crate) fn read_rgb(path: &Path) -> Result<RgbImage, DataError> {
    Ok(reader(path)?
        .decode()
        .map_err(decode_err(path))?
        .into_rgb8())
}

/// A single-channel 8- or 16-bit image's raw values.
pub(crate) fn read_raw_mask(path: &Path) -> Result<(u32, u32, Vec<u16>), DataError> {
    let img = reader(path)?.decode().map_err(decode_err(path))?;
    let (w, h) = (img.width(), img.height());
    let data = match img {
        DynamicImage::ImageLuma8(g) => g.into_raw().into_iter().map(u16::from).collect(),
        DynamicImage::ImageLuma16(g) => g.into_raw(),
        other => {
            return Err(DataError::MaskFormat {
                path: path.to_path_buf(),
                found: format!("{:?}", other.color()),
            })
        }
    };
    Ok((w, h, data))
}

fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Files directly in `dir` with one of `exts`, sorted by name; `what` names
/// the folder's role in errors.
/// `read_dir` with a missing folder named as what it should hold.
fn read_dir(dir: &Path, what: &'static str) -> Result<std::fs::ReadDir, DataError> {
    std::fs::read_dir(dir).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingDir {
                what,
                path: dir.to_path_buf(),
            }
        } else {
            DataError::Io {
                path: dir.to_path_buf(),
                source,
            }
        }
    })
}

/// An image without its mask: an error, or with `skip_bad` an entry in `skipped` (the
/// caller then leaves the image out).
pub(crate) fn missing_mask(
    image: PathBuf,
    expected: PathBuf,
    skip_bad: bool,
    skipped: &mut Vec<Skipped>,
) -> Result<(), DataError> {
    let file = image.clone();
    let err = DataError::MissingMask { image, expected };
    if !skip_bad {
        return Err(err);
    }
    skipped.push(Skipped {
        file,
        reason: err.to_string(),
    });
    Ok(())
}

pub(crate) fn list_files(
    dir: &Path,
    what: &'static str,
    exts: &[&str],
) -> Result<Vec<PathBuf>, DataError> {
    let entries = read_dir(dir, what)?;
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = e.path();
        if path.is_file() && has_ext(&path, exts) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Sub-folders of `dir`, sorted by name.
pub(crate) fn list_dirs(dir: &Path, what: &'static str) -> Result<Vec<PathBuf>, DataError> {
    let entries = read_dir(dir, what)?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    Ok(out)
}

/// The file name without its last extension, as text.
pub(crate) fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(crate) fn read_text(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Colour `i` of the PASCAL VOC palette (bits of `i` spread over the high
/// bits of r, g, b): distinct, conventional colours for classes without
/// their own.
pub fn pascal_colour(i: usize) -> [u8; 3] {
    let mut c = [0u8; 3];
    let mut id = i;
    for shift in (0..8).rev() {
        for (ch, v) in c.iter_mut().enumerate() {
            *v |= (((id >> ch) & 1) as u8) << shift;
        }
        id >>= 3;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pascal_palette_starts_as_voc() {
        assert_eq!(pascal_colour(0), [0, 0, 0]);
        assert_eq!(pascal_colour(1), [128, 0, 0]);
        assert_eq!(pascal_colour(2), [0, 128, 0]);
        assert_eq!(pascal_colour(3), [128, 128, 0]);
        assert_eq!(pascal_colour(15), [192, 128, 128]);
    }

    #[test]
    fn listing_filters_and_sorts() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b.PNG", "a.jpg", "c.txt", "d.jpeg"] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        std::fs::create_dir(d.path().join("sub.png")).unwrap();
        let got: Vec<String> = list_files(d.path(), "images", &IMAGE_EXTS)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(got, ["a.jpg", "b.PNG", "d.jpeg"]);
        let e = list_files(&d.path().join("nope"), "images", &IMAGE_EXTS).unwrap_err();
        assert!(matches!(e, DataError::MissingDir { .. }));
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn rgb_masks_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.png");
        RgbImage::new(2, 2).save(&p).unwrap();
        let e = read_raw_mask(&p).unwrap_err();
        assert!(matches!(e, DataError::MaskFormat { .. }), "{e}");
        assert!(e.to_string().contains("m.png"));
    }
}
