//! Bits of a NAL unit's payload, read MSB first, and the RBSP under its emulation prevention bytes: what the
//! H.264 and HEVC parameter-set readers share.

/// Why bits could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BitsError {
    /// The bits ran out mid-field.
    Truncated,
    /// An exp-Golomb code longer than 32 bits.
    ExpGolomb,
}

/// Reads bits MSB first from an RBSP (emulation prevention bytes already removed).
pub(crate) struct Bits<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bits<'a> {
    /// Bits from the first bit of `data`.
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }

    /// One bit.
    pub(crate) fn bit(&mut self) -> Result<u32, BitsError> {
        let byte = self.data.get(self.at / 8).ok_or(BitsError::Truncated)?;
        let bit = (byte >> (7 - self.at % 8)) & 1;
        self.at += 1;
        Ok(u32::from(bit))
    }

    /// `n` bits (at most 32) as a number.
    pub(crate) fn bits(&mut self, n: u32) -> Result<u32, BitsError> {
        (0..n).try_fold(0, |acc: u32, _| Ok(acc.wrapping_shl(1) | self.bit()?))
    }

    /// Skips `n` bits.
    pub(crate) fn skip(&mut self, n: usize) -> Result<(), BitsError> {
        if self.at + n > self.data.len() * 8 {
            return Err(BitsError::Truncated);
        }
        self.at += n;
        Ok(())
    }

    /// Unsigned exp-Golomb.
    pub(crate) fn ue(&mut self) -> Result<u32, BitsError> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(BitsError::ExpGolomb);
            }
        }
        let rest = self.bits(zeros)?;
        Ok(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }

    /// Signed exp-Golomb.
    pub(crate) fn se(&mut self) -> Result<i64, BitsError> {
        let k = i64::from(self.ue()?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// The RBSP of a NAL unit: its payload with the emulation prevention bytes (`00 00 03`) taken out.
pub fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_exp_golomb_and_emulation_prevention() {
        // 1 (ue 0), 010 (ue 1), 011 (ue 2), 00100 (ue 3), then 0b101.
        let mut b = Bits::new(&[0b1010_0110, 0b0100_1010]);
        assert_eq!((b.ue(), b.ue(), b.ue(), b.ue()), (Ok(0), Ok(1), Ok(2), Ok(3)));
        assert_eq!((b.bits(3), b.bit()), (Ok(0b101), Ok(0)));
        assert_eq!(b.bit(), Err(BitsError::Truncated));
        assert_eq!(Bits::new(&[0, 0, 0, 0, 0]).ue(), Err(BitsError::ExpGolomb));
        assert_eq!(Bits::new(&[0xff]).skip(9), Err(BitsError::Truncated));
        assert_eq!(rbsp(&[1, 0, 0, 3, 1, 0, 0, 3, 0, 3]), vec![1, 0, 0, 1, 0, 0, 0, 3]);
    }
}
