//! PostGIS `geometry` and `geography` values: PostgreSQL sends them as EWKB (binary in
//! `COPY ... (FORMAT binary)`, hex text in the change stream); the lake stores ISO WKB,
//! which DuckDB's spatial extension, Sedona, GeoPandas and Shapely read. EWKB marks Z, M
//! and the SRID with flag bits of the type word and puts the SRID after it; ISO WKB has
//! no SRID and codes dimensions as 1000 (Z), 2000 (M) and 3000 (ZM) added to the type.
//! Coordinates are copied as they are, in each geometry's own byte order.

/// EWKB type-word flags.
const Z_FLAG: u32 = 0x8000_0000;
const M_FLAG: u32 = 0x4000_0000;
const SRID_FLAG: u32 = 0x2000_0000;

/// Nesting deeper than this is refused (a collection of collections ...).
const MAX_DEPTH: usize = 32;

/// The SRID a PostGIS type modifier declares (`geometry(Point, 4326)`), if any.
pub fn typmod_srid(typmod: i32) -> Option<i32> {
    if typmod < 0 {
        return None;
    }
    // liblwgeom's TYPMOD_GET_SRID: 21 bits from bit 8, sign-extended.
    let srid = ((typmod & 0x0FFF_FF00) - (typmod & 0x1000_0000)) >> 8;
    (srid != 0).then_some(srid)
}

/// Convert one EWKB value to ISO WKB, appended to `out`; returns the value's SRID (0
/// when it has none).
pub fn ewkb_to_wkb(ewkb: &[u8], out: &mut Vec<u8>) -> Result<i32, String> {
    let mut r = Reader { buf: ewkb, at: 0 };
    let srid = geometry(&mut r, out, 0)?;
    if r.at != ewkb.len() {
        return Err(format!(
            "{} bytes after the end of a geometry",
            ewkb.len() - r.at
        ));
    }
    Ok(srid)
}

/// Hex text (the change stream's form) to bytes.
pub fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("{:?} is not a hex digit", c as char)),
    };
    let b = text.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err("a hex geometry of odd length".into());
    }
    b.chunks_exact(2)
        .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err("a geometry ends early".into());
        };
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self, little: bool) -> Result<u32, String> {
        let b: [u8; 4] = self.take(4)?.try_into().expect("4 bytes");
        Ok(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32, little: bool) {
    out.extend_from_slice(&if little {
        v.to_le_bytes()
    } else {
        v.to_be_bytes()
    });
}

/// One geometry with its header; returns its SRID.
fn geometry(r: &mut Reader<'_>, out: &mut Vec<u8>, depth: usize) -> Result<i32, String> {
    if depth > MAX_DEPTH {
        return Err("a geometry nested too deep".into());
    }
    let order = r.take(1)?[0];
    let little = match order {
        0 => false,
        1 => true,
        b => return Err(format!("byte order {b} is neither 0 nor 1")),
    };
    let word = r.u32(little)?;
    let mut z = word & Z_FLAG != 0;
    let mut m = word & M_FLAG != 0;
    let mut base = word & 0x0FFF_FFFF;
    // An ISO code inside EWKB (PostGIS writes flags, other writers may not).
    if base >= 1000 {
        let dims = base / 1000;
        z |= dims & 1 == 1;
        m |= dims >= 2;
        base %= 1000;
    }
    let srid = if word & SRID_FLAG != 0 {
        r.u32(little)? as i32
    } else {
        0
    };
    let iso = base + u32::from(z) * 1000 + u32::from(m) * 2000;
    out.push(order);
    put_u32(out, iso, little);
    let point = 8 * (2 + usize::from(z) + usize::from(m));
    let points = |r: &mut Reader<'_>, out: &mut Vec<u8>| -> Result<(), String> {
        let n = r.u32(little)?;
        put_u32(out, n, little);
        let len = (n as usize)
            .checked_mul(point)
            .ok_or("a geometry too large")?;
        out.extend_from_slice(r.take(len)?);
        Ok(())
    };
    match base {
        // Point.
        1 => out.extend_from_slice(r.take(point)?),
        // LineString, CircularString.
        2 | 8 => points(r, out)?,
        // Polygon, Triangle: rings of points.
        3 | 17 => {
            let rings = r.u32(little)?;
            put_u32(out, rings, little);
            for _ in 0..rings {
                points(r, out)?;
            }
        }
        // Multi*, GeometryCollection, CompoundCurve, CurvePolygon, MultiCurve,
        // MultiSurface, PolyhedralSurface, TIN: geometries with their own headers.
        4..=7 | 9..=12 | 15 | 16 => {
            let n = r.u32(little)?;
            put_u32(out, n, little);
            for _ in 0..n {
                geometry(r, out, depth + 1)?;
            }
        }
        other => return Err(format!("unknown geometry type {other}")),
    }
    Ok(srid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02X}")).collect()
    }

    #[test]
    fn ewkb_points_become_iso_wkb() {
        // SELECT 'SRID=4326;POINT(1 2)'::geometry  (as PostgreSQL prints it)
        let ewkb = unhex("0101000020E6100000000000000000F03F0000000000000040").unwrap();
        let mut out = Vec::new();
        assert_eq!(ewkb_to_wkb(&ewkb, &mut out).unwrap(), 4326);
        assert_eq!(
            hex(&out),
            "0101000000000000000000F03F0000000000000040",
            "ST_AsBinary('POINT(1 2)')"
        );
        // POINT Z (1 2 3) without SRID: type 0x80000001 -> 1001.
        let ewkb = unhex("0101000080000000000000F03F00000000000000400000000000000840").unwrap();
        out.clear();
        assert_eq!(ewkb_to_wkb(&ewkb, &mut out).unwrap(), 0);
        assert_eq!(&out[1..5], &1001u32.to_le_bytes());
        assert_eq!(&out[5..], &ewkb[5..]);
    }

    #[test]
    fn collections_convert_every_member() {
        // SRID=3857;MULTIPOINT M ((1 2 3)) in big-endian: the members carry flags too.
        let mut ewkb = vec![0];
        ewkb.extend((0x6000_0004u32).to_be_bytes()); // M | SRID | MultiPoint
        ewkb.extend(3857u32.to_be_bytes());
        ewkb.extend(1u32.to_be_bytes());
        ewkb.push(0);
        ewkb.extend((0x4000_0001u32).to_be_bytes()); // M | Point
        for v in [1.0f64, 2.0, 3.0] {
            ewkb.extend(v.to_be_bytes());
        }
        let mut out = Vec::new();
        assert_eq!(ewkb_to_wkb(&ewkb, &mut out).unwrap(), 3857);
        let mut want = vec![0];
        want.extend(2004u32.to_be_bytes());
        want.extend(1u32.to_be_bytes());
        want.push(0);
        want.extend(2001u32.to_be_bytes());
        for v in [1.0f64, 2.0, 3.0] {
            want.extend(v.to_be_bytes());
        }
        assert_eq!(out, want);
    }

    #[test]
    fn broken_values_are_refused() {
        let mut out = Vec::new();
        let e = ewkb_to_wkb(&[1, 1, 0, 0, 0, 0], &mut out).unwrap_err();
        assert!(e.contains("ends early"), "{e}");
        let e = ewkb_to_wkb(&[7, 1, 0, 0, 0], &mut out).unwrap_err();
        assert!(e.contains("byte order"), "{e}");
        let e = ewkb_to_wkb(&[1, 99, 0, 0, 0], &mut out).unwrap_err();
        assert!(e.contains("unknown geometry type 99"), "{e}");
        assert!(unhex("0G").is_err());
    }

    #[test]
    fn type_modifiers_declare_srids() {
        // geometry(Point,4326) and geometry(Geometry) as PostGIS encodes them.
        assert_eq!(typmod_srid((4326 << 8) | (1 << 2)), Some(4326));
        assert_eq!(typmod_srid(0), None);
        assert_eq!(typmod_srid(-1), None);
    }
}
