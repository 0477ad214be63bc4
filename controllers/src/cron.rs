//! CronJob schedules, pure: five-field cron expressions (and the `@hourly`-style shorthands)
//! read in a time zone.

/// A cron schedule (five fields: minute hour day-of-month month day-of-week) with `*`,
/// lists, ranges and steps, and the `@hourly`-style shorthands.
#[derive(Debug, Clone, PartialEq)]
pub struct Cron {
    fields: [Vec<bool>; 5],
    dom_any: bool,
    dow_any: bool,
}

const RANGES: [(u32, u32); 5] = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)];

impl Cron {
    pub fn parse(s: &str) -> Result<Cron, String> {
        let s = match s.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let parts: Vec<&str> = s.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!("expected exactly 5 fields, found {}: {s:?}", parts.len()));
        }
        let mut fields: [Vec<bool>; 5] = Default::default();
        for (i, p) in parts.iter().enumerate() {
            let (lo, hi) = RANGES[i];
            let mut set = vec![false; hi as usize + 1];
            for item in p.split(',') {
                let (range, step) = match item.split_once('/') {
                    Some((r, st)) => (r, st.parse::<u32>().map_err(|_| format!("bad step in {item:?}"))?.max(1)),
                    None => (item, 1),
                };
                let (a, b) = if range == "*" {
                    (lo, hi)
                } else if let Some((x, y)) = range.split_once('-') {
                    (x.parse().map_err(|_| format!("bad range {item:?}"))?, y.parse().map_err(|_| format!("bad range {item:?}"))?)
                } else {
                    let v: u32 = range.parse().map_err(|_| format!("bad value {item:?}"))?;
                    (v, if item.contains('/') { hi } else { v })
                };
                // Sunday may be written 7.
                let (a, b) = if i == 4 { (a % 7, if b == 7 { 6 } else { b }) } else { (a, b) };
                if a < lo || b > hi || a > b {
                    return Err(format!("{item:?} is out of range {lo}-{hi}"));
                }
                for v in (a..=b).step_by(step as usize) {
                    set[v as usize] = true;
                }
                if i == 4 && range.ends_with('7') {
                    set[0] = true;
                }
            }
            fields[i] = set;
        }
        Ok(Cron { fields, dom_any: parts[2] == "*", dow_any: parts[4] == "*" })
    }

    fn matches(&self, t: &jiff::civil::DateTime) -> bool {
        let f = &self.fields;
        let dom = f[2][t.day() as usize];
        let dow = f[4][t.weekday().to_sunday_zero_offset() as usize];
        // Cron's rule: when both day fields are restricted, either may match.
        let day = if self.dom_any || self.dow_any { dom && dow } else { dom || dow };
        f[0][t.minute() as usize] && f[1][t.hour() as usize] && f[3][t.month() as usize] && day
    }

    /// The latest scheduled time in (`after`, `now`] (unix seconds), the schedule read in
    /// time zone `tz` (a CronJob's `timeZone`; UTC without one), if any; looks back at most a
    /// day of minutes (Kubernetes stops counting missed schedules at 100).
    pub fn last_between(&self, after: i64, now: i64, tz: &jiff::tz::TimeZone) -> Option<i64> {
        let mut t = now - now.rem_euclid(60);
        let floor = after.max(now - 86_400);
        while t > floor {
            let dt = jiff::Timestamp::from_second(t).ok()?.to_zoned(tz.clone()).datetime();
            if self.matches(&dt) {
                return Some(t);
            }
            t -= 60;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_schedules() {
        let ts = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_second();
        let utc = jiff::tz::TimeZone::UTC;
        let every5 = Cron::parse("*/5 * * * *").unwrap();
        assert_eq!(every5.last_between(ts("2026-11-22T10:00:00Z"), ts("2026-11-22T10:07:30Z"), &utc), Some(ts("2026-11-22T10:05:00Z")));
        assert_eq!(every5.last_between(ts("2026-11-22T10:05:00Z"), ts("2026-11-22T10:07:30Z"), &utc), None, "already ran at 10:05");
        let weekdays = Cron::parse("30 9 * * 1-5").unwrap();
        // 2026-11-22 is a Sunday: the last run was Friday 20th at 09:30? Only a day back: none.
        assert_eq!(weekdays.last_between(0, ts("2026-11-22T12:00:00Z"), &utc), None);
        assert_eq!(weekdays.last_between(0, ts("2026-11-23T12:00:00Z"), &utc), Some(ts("2026-11-23T09:30:00Z")));
        // timeZone: 09:30 in Tokyo is 00:30 UTC; in New York (EST in November), 14:30 UTC.
        let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap();
        assert_eq!(weekdays.last_between(0, ts("2026-11-23T12:00:00Z"), &tokyo), Some(ts("2026-11-23T00:30:00Z")));
        let ny = jiff::tz::TimeZone::get("America/New_York").unwrap();
        assert_eq!(weekdays.last_between(0, ts("2026-11-23T12:00:00Z"), &ny), None, "not yet 09:30 there");
        assert_eq!(weekdays.last_between(0, ts("2026-11-23T15:00:00Z"), &ny), Some(ts("2026-11-23T14:30:00Z")));
        assert!(Cron::parse("@hourly").is_ok());
        for bad in ["* * * *", "61 * * * *", "a * * * *", "5-1 * * * *"] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }
}
