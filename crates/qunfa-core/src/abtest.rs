//! A/B tests, the pure part: what may vary, what is measured, and the seeded
//! assignment of recipients to arms (docs/measurement.md).

use std::collections::BTreeMap;

/// The one thing the variants of a test differ in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variable {
    /// The text (or the whole content) of the message.
    Content,
    /// When each arm is sent (a delay after the test starts).
    SendTime,
    /// The delivery channel.
    Channel,
    /// The kind of attachment (image, file, link …): the content's type.
    Attachment,
}

impl Variable {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "content" => Self::Content,
            "send_time" => Self::SendTime,
            "channel" => Self::Channel,
            "attachment" => Self::Attachment,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Content => "content",
            Self::SendTime => "send_time",
            Self::Channel => "channel",
            Self::Attachment => "attachment",
        }
    }
}

/// What decides the winner: the share of delivered recipients who did it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Open,
    Reply,
    Forward,
    Click,
    Conversion,
}

impl Metric {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => Self::Open,
            "reply" => Self::Reply,
            "forward" => Self::Forward,
            "click" => Self::Click,
            "conversion" => Self::Conversion,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Reply => "reply",
            Self::Forward => "forward",
            Self::Click => "click",
            Self::Conversion => "conversion",
        }
    }
}

/// SplitMix64: a fixed, well-mixed permutation of 64-bit values.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The arms and the rest of an audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Recipients of each arm, ascending.
    pub arms: Vec<Vec<u32>>,
    /// Recipients left for the winner, ascending.
    pub rest: Vec<u32>,
}

/// Splits `audience` (contact ids) into `k` arms holding about `fraction` of
/// it, and the rest. Random but reproducible: each contact's place is a hash
/// of the seed and its id, so the same seed and audience give the same
/// assignment on any node. With `stratum`, each stratum (e.g. each city)
/// gives its own share to the test and is dealt round-robin over the arms,
/// continuing where the previous stratum stopped, so every arm gets the same
/// mix of strata and arm sizes differ by at most one.
///
/// # Panics
/// Never; `k` of 0 gives no arms (everyone is in the rest).
pub fn assign(
    audience: &[u32],
    k: usize,
    fraction: f64,
    seed: u64,
    stratum: Option<&dyn Fn(u32) -> String>,
) -> Assignment {
    let mut strata: BTreeMap<String, Vec<(u64, u32)>> = BTreeMap::new();
    for &id in audience {
        let key = mix(seed ^ mix(u64::from(id)));
        let s = stratum.map(|f| f(id)).unwrap_or_default();
        strata.entry(s).or_default().push((key, id));
    }
    let mut arms = vec![Vec::new(); k];
    let mut rest = Vec::new();
    let mut dealt = 0usize;
    let fraction = fraction.clamp(0.0, 1.0);
    for members in strata.values_mut() {
        members.sort_unstable();
        let take = if k == 0 { 0 } else { ((members.len() as f64) * fraction).round() as usize };
        for (i, &(_, id)) in members.iter().enumerate() {
            if i < take {
                arms[dealt % k].push(id);
                dealt += 1;
            } else {
                rest.push(id);
            }
        }
    }
    for arm in &mut arms {
        arm.sort_unstable();
    }
    rest.sort_unstable();
    Assignment { arms, rest }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_balanced_and_complete() {
        let audience: Vec<u32> = (0..10_000).collect();
        let a = assign(&audience, 3, 0.3, 42, None);
        assert_eq!(a, assign(&audience, 3, 0.3, 42, None), "the same seed gives the same split");
        assert_ne!(a.arms[0], assign(&audience, 3, 0.3, 43, None).arms[0], "another seed another split");
        let sizes: Vec<usize> = a.arms.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1000, 1000, 1000]);
        assert_eq!(a.rest.len(), 7000);
        let mut all: Vec<u32> = a.arms.concat();
        all.extend(&a.rest);
        all.sort_unstable();
        assert_eq!(all, audience, "everyone exactly once");
        // Random, not a range: every arm has contacts from the whole audience.
        for arm in &a.arms {
            assert!(arm.iter().any(|&i| i < 1000) && arm.iter().any(|&i| i >= 9000));
        }
        // Order of the input does not matter.
        let mut reversed = audience.clone();
        reversed.reverse();
        assert_eq!(assign(&reversed, 3, 0.3, 42, None), a);
    }

    #[test]
    fn stratified_arms_get_the_same_mix() {
        // 900 in 上海, 300 in 北京, 3 in 广州.
        let audience: Vec<u32> = (0..1203).collect();
        let city = |id: u32| {
            if id < 900 {
                "上海".to_owned()
            } else if id < 1200 {
                "北京".to_owned()
            } else {
                "广州".to_owned()
            }
        };
        let a = assign(&audience, 3, 1.0, 7, Some(&city));
        for arm in &a.arms {
            let n = |c: &str| arm.iter().filter(|&&i| city(i) == c).count();
            assert_eq!((n("上海"), n("北京"), n("广州")), (300, 100, 1), "{arm:?}");
        }
        assert!(a.rest.is_empty());
        // Half of each stratum to the test: 450 + 150 + 2 (1.5 rounds up) = 602 over 3 arms.
        let a = assign(&audience, 3, 0.5, 7, Some(&city));
        let sizes: Vec<usize> = a.arms.iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 602);
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
    }
}
