//! Places for the service-area check: US ZIP code centroids (a table compiled into the binary, rebuilt by
//! `scripts/make-zip-centroids`) and great-circle distance. Pure: the table is data, not I/O.

const TABLE: &[u8] = include_bytes!("../../data/us-zip-centroids.bin");
const RECORD: usize = 7;

fn record(i: usize) -> (u32, f64, f64) {
    let r = &TABLE[i * RECORD..(i + 1) * RECORD];
    let zip = u32::from_be_bytes([0, r[0], r[1], r[2]]);
    let lat = f64::from(i16::from_le_bytes([r[3], r[4]])) / 100.0;
    let lon = f64::from(i16::from_le_bytes([r[5], r[6]])) / 100.0;
    (zip, lat, lon)
}

/// The centroid (latitude, longitude) of a 5-digit US ZIP code, to about 0.7 mile.
pub fn zip_centroid(zip: &str) -> Option<(f64, f64)> {
    if zip.len() != 5 || !zip.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let wanted: u32 = zip.parse().ok()?;
    let (mut lo, mut hi) = (0, TABLE.len() / RECORD);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let (z, lat, lon) = record(mid);
        match z.cmp(&wanted) {
            std::cmp::Ordering::Equal => return Some((lat, lon)),
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
        }
    }
    None
}

/// Great-circle distance in miles (haversine).
pub fn miles_between(a: (f64, f64), b: (f64, f64)) -> f64 {
    const EARTH_RADIUS_MILES: f64 = 3958.8;
    let (lat1, lat2) = (a.0.to_radians(), b.0.to_radians());
    let (dlat, dlon) = ((b.0 - a.0).to_radians(), (b.1 - a.1).to_radians());
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_MILES * h.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_zips_and_measures_miles() {
        assert_eq!(TABLE.len() % RECORD, 0);
        assert!((0..TABLE.len() / RECORD - 1).all(|i| record(i).0 < record(i + 1).0), "sorted");
        let portland = zip_centroid("97201").unwrap();
        let manhattan = zip_centroid("10001").unwrap();
        assert!((portland.0 - 45.51).abs() < 0.02 && (portland.1 + 122.69).abs() < 0.02, "{portland:?}");
        assert_eq!(zip_centroid("00501"), Some((40.82, -73.05)), "the first record");
        assert_eq!(zip_centroid("00000"), None);
        assert_eq!(zip_centroid("9720"), None);
        let d = miles_between(portland, manhattan);
        assert!((2400.0..2460.0).contains(&d), "Portland to New York is about 2,440 miles, got {d}");
    }
}
