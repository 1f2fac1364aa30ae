//! Canonical forms of the identifiers a record holds: phone numbers (E.164 where the
//! number can be parsed), e-mail addresses and IP addresses. The blind index is computed
//! over these forms, so a lookup finds a record however the client spelled the value.

use std::borrow::Cow;
use std::net::IpAddr;

use std::sync::Arc;

use phonenumber::country;

/// How an identifier was normalised. Stored plain beside the record: it tells a
/// compliance officer whether a match was exact E.164 or a raw string comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Form {
    /// Parsed as a phone number and formatted E.164 (`+31612345678`).
    E164 = 1,
    /// Not parseable as a phone number (short code, alphanumeric sender id, junk):
    /// kept in a canonical raw form, see [`canonical_raw`].
    Raw = 2,
    /// An e-mail address, domain lower-cased, local part as given.
    Email = 3,
    /// An alphanumeric sender id (SMPP TON 5, or letters in it), canonical raw form.
    Alphanumeric = 4,
    /// A short code or network-specific number (SMPP TON 3 or 6, or a few digits
    /// that are no valid number), its digits.
    ShortCode = 5,
    /// A distribution list's name (SMPP submit_multi), as sent.
    List = 6,
}

impl Form {
    pub fn from_u8(v: u8) -> Option<Form> {
        match v {
            1 => Some(Form::E164),
            2 => Some(Form::Raw),
            3 => Some(Form::Email),
            4 => Some(Form::Alphanumeric),
            5 => Some(Form::ShortCode),
            6 => Some(Form::List),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Form::E164 => "e164",
            Form::Raw => "raw",
            Form::Email => "email",
            Form::Alphanumeric => "alphanumeric",
            Form::ShortCode => "short_code",
            Form::List => "list",
        }
    }
}

/// A normalised identifier: the value the blind index and the sealed copy are made of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identifier {
    pub form: Form,
    pub value: String,
}

/// The longest identifier relaylog records. Longer input is cut (at a char boundary)
/// so that a hostile client cannot make one record arbitrarily large.
pub const MAX_IDENTIFIER_BYTES: usize = 256;

/// Normalises phone numbers with a default region for national formats.
///
/// ```
/// use relaylog::canonical::{Form, NumberNormalizer};
/// let nl = NumberNormalizer::new(phonenumber::country::Id::NL);
/// let id = nl.normalize("06-1234 5678");
/// assert_eq!((id.form, id.value.as_str()), (Form::E164, "+31612345678"));
/// assert_eq!(nl.normalize("ACME").form, Form::Raw);
/// ```
///
/// `phonenumber` loads its metadata when first used (~100 ms: it compiles every
/// pattern), and the region's patterns are compiled at the first national number:
/// [`NumberNormalizer::warmed`] does both up front, so that a server's first request
/// does not pay for them; a one-off command takes [`NumberNormalizer::new`] and pays
/// only for what it uses (a valid number in `+` form: nothing, see `International`).
///
/// Numbers already in international format (`+` or the region's `00`, then digits)
/// take a fast path that needs no parsing, and valid numbers in the region's national
/// format one that runs the region's patterns compiled once: see `International`.
#[derive(Debug, Clone)]
pub struct NumberNormalizer {
    region: country::Id,
    /// From tables generated from the metadata (see `Facts`): cheap to build.
    international: Arc<International>,
}

impl NumberNormalizer {
    pub fn new(region: country::Id) -> Self {
        Self {
            region,
            international: Arc::new(International::new(region)),
        }
    }

    /// [`Self::new`], with the metadata and the region's patterns loaded now.
    pub fn warmed(region: country::Id) -> Self {
        let n = Self::new(region);
        let _ = n.normalize("0612345678");
        n
    }

    /// E.164 when the number parses, otherwise the canonical raw form marked
    /// [`Form::Raw`]. Idempotent: normalising the output again yields the output.
    pub fn normalize(&self, input: &str) -> Identifier {
        let raw = canonical_raw(input);
        match self.international.classify(&raw) {
            Fast::E164(value) => {
                return Identifier {
                    form: Form::E164,
                    value,
                };
            }
            Fast::Parse => {}
        }
        if let Some(e164) = self.parse_e164(&raw) {
            return Identifier {
                form: Form::E164,
                value: e164,
            };
        }
        Identifier {
            form: Form::Raw,
            value: raw,
        }
    }

    fn parse_e164(&self, raw: &str) -> Option<String> {
        // A phone number has at most 15 digits (E.164) and at least a few; anything
        // else is not worth handing to the parser. Letters mean an alphanumeric sender.
        let digits = raw.bytes().filter(u8::is_ascii_digit).count();
        if !(3..=17).contains(&digits) || raw.bytes().any(|b| !(b.is_ascii_digit() || b == b'+')) {
            return None;
        }
        let region = self.region;
        // phonenumber has panicked on odd input in the past; a panic here must not take
        // a connection down with it.
        let parsed = std::panic::catch_unwind(|| phonenumber::parse(Some(region), raw)).ok()?;
        let number = parsed.ok()?;
        // Only a number the metadata knows as valid gets the E.164 form: a guess (digits
        // read in the region's format that its numbering plan does not have) would
        // index a value no one typed; the raw form matches what the client sent.
        if !number.is_valid() {
            return None;
        }
        let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
        // Only a result that is itself stable counts: "+" followed by digits.
        let stable = e164.len() > 1
            && e164.starts_with('+')
            && e164[1..].bytes().all(|b| b.is_ascii_digit())
            && e164.len() <= 16;
        if !stable {
            return None;
        }
        // And one that reads back as itself: phonenumber can drop leading zeros of a
        // national number (Italy's) when it formats it, and the E.164 string is then
        // another number, one it does not hold valid: normalised again, it would be
        // indexed raw (fuzz/artifacts/stored_values/crash-e71379a1…).
        // Read in the same region, as the next normalisation reads it: phonenumber
        // reads `+39030661` with a leading zero without a region, without one in NL.
        let again = std::panic::catch_unwind(|| phonenumber::parse(Some(region), &e164))
            .ok()?
            .ok()?;
        let round_trip =
            again.is_valid() && again.format().mode(phonenumber::Mode::E164).to_string() == e164;
        round_trip.then_some(e164)
    }
}

/// What the fast path decided about a number in canonical raw form.
#[derive(Debug, PartialEq, Eq)]
enum Fast {
    /// International format, a country code in use, a length possible there: this is
    /// the E.164 form.
    E164(String),
    /// Anything else (national format, a prefix the parser would strip or rewrite,
    /// an unknown code or impossible length): ask the full parser.
    Parse,
}

/// The fast path for numbers in international format, built once from tables
/// generated from the `phonenumber` metadata (`Facts`), without loading it.
///
/// Why: `phonenumber` runs every regular expression through one process-wide,
/// mutex-guarded cache keyed by the pattern text, so under load two request threads
/// spend most of a normalisation hashing pattern strings and waiting for each other
/// (20% of the relay's CPU in the issue 4 profile). A number that arrives as `+` and
/// digits is already E.164 when its country code is in use, the default region's
/// parser would not strip a national prefix from it, and its national part has a
/// possible length for that code (libphonenumber's `isPossibleNumber`): those three
/// checks are table lookups here. Everything else goes to the parser as before.
///
/// The E.164 form of a number that is possible but not valid in its country's
/// numbering plan (a range not assigned) is now [`Form::E164`] where the parser alone
/// said [`Form::Raw`]; the value, and so the blind index, is the same either way.
/// `fast_path_agrees_with_the_parser` checks the two against each other.
#[derive(Debug)]
struct International {
    facts: Facts,
    region: country::Id,
    /// The default region's patterns, compiled at the first number in its national
    /// format (compiling them is most of a one-off command's start-up).
    plan: std::sync::OnceLock<NationalPlan>,
}

/// What the fast path for national formats runs.
#[derive(Debug)]
struct NationalPlan {
    /// The default region's international call prefix as the parser matches it: a
    /// number that begins with it (`019…` in IL) is read as international.
    idd: Option<regex::Regex>,
    /// The default region's own numbering plan, for numbers in its national format.
    home: Option<Home>,
}

/// The default region's numbering plan as the validator reads it, its patterns
/// compiled once (see [`International::national`]).
#[derive(Debug)]
struct Home {
    /// Its country calling code, as digits.
    code: String,
    general: Pattern,
    /// Every number type the validator knows (premium rate … mobile): a national
    /// number that matches the general pattern and one of these is valid.
    types: Vec<Pattern>,
}

/// One descriptor of the metadata: possible lengths and the national number pattern.
#[derive(Debug)]
struct Pattern {
    lengths: Vec<u16>,
    re: regex::Regex,
}

impl Pattern {
    fn of(d: &phonenumber::metadata::Descriptor) -> Option<Pattern> {
        Some(Pattern {
            lengths: d.possible_length().to_vec(),
            re: anchored(d.national_number().as_str())?,
        })
    }

    /// `phonenumber`'s `Descriptor::is_match`: a possible length (when there are
    /// any), and the pattern found at the start.
    fn is_match(&self, national: &str) -> bool {
        (self.lengths.is_empty() || self.lengths.contains(&(national.len() as u16)))
            && self.re.is_match(national)
    }
}

/// A metadata pattern compiled as `phonenumber` compiles it (its metadata is written
/// with white space), anchored: it matches where `phonenumber`'s `find` would find a
/// match starting at the first character, without searching the rest of the input.
fn anchored(pattern: &str) -> Option<regex::Regex> {
    // The closing parenthesis on a line of its own, out of reach of a `#` comment.
    regex::RegexBuilder::new(&format!("^(?:{pattern}\n)"))
        .ignore_whitespace(true)
        .build()
        .ok()
}

impl Home {
    /// The plan of a region that is alone with its country code (the validator would
    /// otherwise choose among regions by leading digits: those take the parser).
    fn of(db: &phonenumber::metadata::Database, region: country::Id) -> Option<Home> {
        let meta = db.by_id(region.as_ref())?;
        let code = meta.country_code();
        if db.region(&code)?.len() != 1 {
            return None;
        }
        let d = meta.descriptors();
        let mut types = Vec::new();
        // Any one of them makes a number valid: the commonest first.
        for desc in [
            d.mobile(),
            d.fixed_line(),
            d.premium_rate(),
            d.toll_free(),
            d.shared_cost(),
            d.voip(),
            d.personal_number(),
            d.pager(),
            d.uan(),
            d.voicemail(),
        ]
        .into_iter()
        .flatten()
        {
            types.push(Pattern::of(desc)?);
        }
        Some(Home {
            code: code.to_string(),
            general: Pattern::of(d.general())?,
            types,
        })
    }

    /// `phonenumber`'s validity: the general pattern and a number type's.
    fn is_valid(&self, national: &str) -> bool {
        self.general.is_match(national) && self.types.iter().any(|t| t.is_match(national))
    }
}

/// What the fast path for international formats needs of the metadata: the possible
/// lengths of every country calling code, and the default region's prefixes.
#[derive(Debug, PartialEq, Eq)]
struct Facts {
    /// Possible lengths of the national significant number, per country calling code
    /// (index = code, 1..=999); empty where the code is not in use.
    lengths: Vec<Vec<u16>>,
    /// Leading digits of a national part that the default region's parser would
    /// strip or rewrite (its national prefix): those take the slow path.
    national_prefix: Option<String>,
    /// The parser applies a national-prefix pattern of the default region: if it is
    /// not a plain literal, every number takes the slow path.
    disabled: bool,
    /// `00` is the default region's international call prefix.
    idd_00: bool,
}

impl Facts {
    /// From `phonenumber`'s database, which compiles every pattern it has when first
    /// used (~120 ms): what [`Facts::of_tables`] is checked against.
    #[cfg(test)]
    fn of_metadata(region: country::Id) -> Self {
        let db = &*phonenumber::metadata::DATABASE;
        let mut lengths: Vec<Vec<u16>> = vec![Vec::new(); 1000];
        for meta in db.iter() {
            let code = meta.country_code() as usize;
            if code == 0 || code >= lengths.len() {
                continue;
            }
            // The general descriptor's lengths are not filled in by the loader: the
            // union of the number types the validator knows.
            let d = meta.descriptors();
            let slot = &mut lengths[code];
            for desc in [
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.premium_rate(),
                d.shared_cost(),
                d.personal_number(),
                d.voip(),
                d.pager(),
                d.uan(),
                d.voicemail(),
            ]
            .into_iter()
            .flatten()
            {
                slot.extend_from_slice(desc.possible_length());
            }
            slot.sort_unstable();
            slot.dedup();
        }
        let home = db.by_id(region.as_ref());
        Self::derive(
            lengths,
            home.map(|m| {
                (
                    m.national_prefix(),
                    m.national_prefix_for_parsing().map(|r| r.as_str()),
                    m.international_prefix().map(|r| r.as_str()),
                )
            }),
        )
    }

    /// From the tables generated from that database (`canonical_tables`), without
    /// loading it: a one-off command that meets a number in `+` form pays nothing.
    fn of_tables(region: country::Id) -> Self {
        let mut lengths: Vec<Vec<u16>> = vec![Vec::new(); 1000];
        for &(code, possible) in crate::canonical_tables::LENGTHS {
            lengths[usize::from(code)] = possible.to_vec();
        }
        let home = crate::canonical_tables::REGIONS
            .iter()
            .find(|r| r.0 == region.as_ref())
            .map(|r| (r.1, r.2, r.3));
        Self::derive(lengths, home)
    }

    /// `home`: the region's national prefix, national prefix for parsing and
    /// international prefix (patterns as text), if the metadata has the region.
    fn derive(
        lengths: Vec<Vec<u16>>,
        home: Option<(Option<&str>, Option<&str>, Option<&str>)>,
    ) -> Self {
        let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let national_prefix = home.and_then(|h| h.0).map(str::to_owned);
        let parsing = home.and_then(|h| h.1);
        let disabled = home.is_none()
            || national_prefix.as_deref().is_some_and(|p| !plain(p))
            || parsing.is_some_and(|p| Some(p) != national_prefix.as_deref());
        let idd_00 = home.and_then(|h| h.2) == Some("00");
        Self {
            lengths,
            national_prefix,
            disabled,
            idd_00,
        }
    }
}

impl International {
    fn new(region: country::Id) -> Self {
        Self {
            facts: Facts::of_tables(region),
            region,
            plan: std::sync::OnceLock::new(),
        }
    }

    fn plan(&self) -> &NationalPlan {
        self.plan.get_or_init(|| {
            let db = &*phonenumber::metadata::DATABASE;
            let idd = db
                .by_id(self.region.as_ref())
                .and_then(|m| m.international_prefix())
                .and_then(|r| anchored(r.as_str()));
            NationalPlan {
                idd,
                home: Home::of(db, self.region),
            }
        })
    }

    fn classify(&self, raw: &str) -> Fast {
        if self.facts.disabled {
            return Fast::Parse;
        }
        let digits = if let Some(d) = raw.strip_prefix('+') {
            d
        } else if let Some(d) = raw.strip_prefix("00").filter(|_| self.facts.idd_00) {
            d
        } else {
            return self.national(raw);
        };
        // A country code never begins with 0 (`+031…` is no number to the parser).
        if digits.is_empty()
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Fast::Parse;
        }
        // Country calling codes are prefix-free: at most one of 1, 2, 3 digits is in use.
        let Some((code_len, lengths)) = (1..=3.min(digits.len()))
            .map(|n| {
                (
                    n,
                    &self.facts.lengths[digits[..n].parse::<usize>().unwrap_or(0)],
                )
            })
            .find(|(_, l)| !l.is_empty())
        else {
            return Fast::Parse;
        };
        let national = &digits[code_len..];
        if self
            .facts
            .national_prefix
            .as_deref()
            .is_some_and(|p| national.starts_with(p))
        {
            return Fast::Parse;
        }
        if !lengths.contains(&(national.len() as u16)) {
            return Fast::Parse;
        }
        let mut value = String::with_capacity(1 + digits.len());
        value.push('+');
        value.push_str(digits);
        Fast::E164(value)
    }
}

impl International {
    /// The fast path for numbers in the default region's national format (`0612345678`
    /// in NL, with its national prefix or without) and for its international format
    /// without `+` (`31612345678`): the parser would strip the country code or the
    /// prefix and validate the rest against the region's patterns, through
    /// `phonenumber`'s mutex-guarded regex cache; here the same patterns, compiled
    /// once, give the same answer for a valid number. Anything else (a prefix after
    /// the code, a second national prefix, an invalid number) takes the parser.
    /// `national_fast_path_agrees_with_the_parser` checks the two against each other.
    fn national(&self, raw: &str) -> Fast {
        let plan = self.plan();
        let Some(home) = &plan.home else {
            return Fast::Parse;
        };
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Fast::Parse;
        }
        // The parser strips the region's international call prefix first (its pattern,
        // not only `00`): what begins with it is the parser's.
        if plan.idd.as_ref().is_none_or(|idd| idd.is_match(raw)) {
            return Fast::Parse;
        }
        let prefix = self.facts.national_prefix.as_deref();
        // The parser reads digits that begin with the region's country code as the
        // code and a national number (Kannel's `to=31612345678` in NL), whatever
        // follows; otherwise it strips the national prefix.
        let national = match (raw.strip_prefix(home.code.as_str()), prefix) {
            (Some(rest), _) => rest,
            (None, Some(p)) if raw.starts_with(p) => &raw[p.len()..],
            (None, _) => raw,
        };
        // The parser's own bounds (see `parse_e164`): 3 to 17 digits in, at most 15 out.
        if !(3..=17).contains(&raw.len())
            || home.code.len() + national.len() > 15
            || national.is_empty()
            || national.starts_with('0')
            || prefix.is_some_and(|p| national.starts_with(p))
            || !home.is_valid(national)
        {
            return Fast::Parse;
        }
        let mut value = String::with_capacity(1 + home.code.len() + national.len());
        value.push('+');
        value.push_str(&home.code);
        value.push_str(national);
        Fast::E164(value)
    }
}

/// The canonical raw form of a number-like string: the visual separators people type
/// (` -.()/` and tabs) removed, then white space at either end, a leading `00` kept
/// as given, length capped. Idempotent: white space that only the separators kept
/// from an end (`"123\u{b}/"`) goes too.
pub fn canonical_raw(input: &str) -> String {
    let mut out = String::with_capacity(input.len().min(MAX_IDENTIFIER_BYTES));
    for c in input.chars() {
        if matches!(c, ' ' | '-' | '.' | '(' | ')' | '/' | '\t')
            || (out.is_empty() && c.is_whitespace())
        {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_IDENTIFIER_BYTES {
            break;
        }
        out.push(c);
    }
    out.truncate(out.trim_end().len());
    out
}

/// An e-mail address as the client sent it (surrounding space and angle brackets taken
/// off, capped): this is the value sealed in the record. Returns a raw form when there
/// is no local part and domain. The blind index is made of [`email_index_form`].
pub fn normalize_email(input: &str) -> Identifier {
    // ASCII white space only: a Unicode space may be part of an SMTPUTF8 address. Both
    // taken off together, and again after the cap, so that normalising is idempotent.
    let start = |c: char| c.is_ascii_whitespace() || c == '<';
    let end = |c: char| c.is_ascii_whitespace() || c == '>';
    let trimmed = cap(input.trim_start_matches(start).trim_end_matches(end)).trim_end_matches(end);
    let form = match trimmed.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Form::Email,
        _ => Form::Raw,
    };
    Identifier {
        form,
        value: trimmed.to_owned(),
    }
}

/// The form an e-mail address is indexed and searched by: the local part as sent (RFC
/// 5321 leaves its case to the receiving domain), the domain in IDNA A-labels,
/// lower-cased, so that `Jan@Bücher.example` and `Jan@xn--bcher-kva.EXAMPLE` are one
/// address.
///
/// ```
/// use relaylog::canonical::email_index_form;
/// assert_eq!(email_index_form("Jan@Bücher.Example"), "Jan@xn--bcher-kva.example");
/// assert_eq!(email_index_form("Jan@XN--BCHER-KVA.example"), "Jan@xn--bcher-kva.example");
/// ```
///
/// A domain IDNA refuses (it is what the client sent, and the upstream decides) is
/// only lower-cased.
pub fn email_index_form(address: &str) -> Cow<'_, str> {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Cow::Borrowed(address);
    };
    // The root's dot (`example.com.`) names the same domain; dots after it, which no
    // domain has, go too, so that the index form of an index form is itself.
    let trimmed = domain.trim_end_matches('.');
    let dotted = trimmed.len() != domain.len();
    let domain = trimmed;
    let local = unquote(local);
    let clean = domain.is_ascii() && !domain.bytes().any(|b| b.is_ascii_uppercase());
    if clean && !dotted && matches!(local, Cow::Borrowed(_)) {
        return Cow::Borrowed(address);
    }
    let domain = if domain.is_ascii() {
        domain.to_ascii_lowercase()
    } else {
        // A domain IDNA refuses is folded no further than ASCII (so that no Unicode
        // case mapping makes two names one). IDNA maps other full stops (`。`) to dots:
        // those it leaves at the end go as well.
        let ascii = idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_ascii_lowercase());
        ascii.trim_end_matches('.').to_owned()
    };
    Cow::Owned(format!("{local}@{domain}"))
}

/// A quoted local part in one spelling: without quotes when they are not needed
/// (`"jan"`, `"j\an"` are `jan`, RFC 5321 §4.1.2), else quoted with only `"` and `\`
/// escaped (`"a b"` and `"a\ b"` are one), as Postfix holds it.
fn unquote(local: &str) -> Cow<'_, str> {
    let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) else {
        return Cow::Borrowed(local);
    };
    let mut plain = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        plain.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    // A dot-atom: atext runs joined by single dots (UTF-8 allowed, RFC 6531).
    let atext = |c: char| c.is_alphanumeric() || !c.is_ascii() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let dot_atom = !plain.is_empty()
        && plain
            .split('.')
            .all(|run| !run.is_empty() && run.chars().all(atext));
    if dot_atom {
        return Cow::Owned(plain);
    }
    let mut quoted = String::with_capacity(plain.len() + 2);
    quoted.push('"');
    for c in plain.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    if quoted == local {
        Cow::Borrowed(local)
    } else {
        Cow::Owned(quoted)
    }
}

impl Identifier {
    /// The value the blind index is computed over: the identifier itself, except for an
    /// e-mail address, which is sealed as sent and indexed by [`email_index_form`].
    pub fn index_value(&self) -> Cow<'_, str> {
        match self.form {
            Form::Email => email_index_form(&self.value),
            Form::E164 | Form::Raw | Form::Alphanumeric | Form::ShortCode | Form::List => {
                Cow::Borrowed(&self.value)
            }
        }
    }
}

/// An IP address in canonical text: IPv4-mapped IPv6 shown as IPv4, IPv6 compressed.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An account name as recorded: trimmed and capped, case kept (gateways compare
/// user names case-sensitively).
pub fn canonical_account(input: &str) -> String {
    cap(input.trim()).to_owned()
}

fn cap(s: &str) -> &str {
    if s.len() <= MAX_IDENTIFIER_BYTES {
        return s;
    }
    let mut end = MAX_IDENTIFIER_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nl() -> NumberNormalizer {
        NumberNormalizer::new(country::Id::NL)
    }

    /// One normaliser per region for the whole test run (each builds its tables).
    fn normalizer(region: country::Id) -> NumberNormalizer {
        static ALL: std::sync::Mutex<Vec<(country::Id, NumberNormalizer)>> =
            std::sync::Mutex::new(Vec::new());
        let mut all = ALL.lock().unwrap();
        if let Some((_, n)) = all.iter().find(|(r, _)| *r == region) {
            return n.clone();
        }
        let n = NumberNormalizer::new(region);
        all.push((region, n.clone()));
        n
    }

    /// Every pattern the fast paths use compiles anchored: one that did not would
    /// silently send every national number to the parser. (Regions that share their
    /// country code, GB's +44 with JE, GG and IM, have no national fast path.)
    #[test]
    fn the_fast_paths_patterns_compile_in_every_plan_tested() {
        for region in [
            country::Id::NL,
            country::Id::DE,
            country::Id::FR,
            country::Id::BE,
            country::Id::CH,
            country::Id::NZ,
            country::Id::IL,
            country::Id::KE,
        ] {
            let n = normalizer(region);
            assert!(
                n.international.plan().home.is_some(),
                "{region:?}: its plan"
            );
            assert!(
                n.international.plan().idd.is_some(),
                "{region:?}: its call prefix"
            );
        }
    }

    /// Numbers people write in their own country's format take the fast path and come
    /// out as the parser makes them.
    #[test]
    fn national_formats_take_the_fast_path() {
        let table = [
            (country::Id::NL, "0612345678", "+31612345678"),
            (country::Id::NL, "612345678", "+31612345678"),
            (country::Id::NL, "0201234567", "+31201234567"),
            (country::Id::DE, "015123456789", "+4915123456789"),
            (country::Id::FR, "0612345678", "+33612345678"),
            (country::Id::BE, "0470123456", "+32470123456"),
        ];
        for (region, raw, e164) in table {
            let n = normalizer(region);
            assert_eq!(
                n.international.national(raw),
                Fast::E164(e164.into()),
                "{region:?} {raw}"
            );
            assert_eq!(n.parse_e164(raw).as_deref(), Some(e164), "{region:?} {raw}");
        }
        // The region's international call prefix is a pattern in some (IL: `01[2-9]`):
        // what begins with it is read as international by the parser.
        let il = normalizer(country::Id::IL);
        assert_eq!(il.international.national("01919123404"), Fast::Parse);
        assert_eq!(il.parse_e164("01919123404"), None);
        // A country code never begins with 0.
        let n = nl();
        assert_eq!(n.international.classify("+012025550123"), Fast::Parse);
        assert_eq!(n.international.classify("00031612345678"), Fast::Parse);
        // A country code shared by several regions (+44: GB, GG, IM, JE): the parser
        // chooses among them.
        let gb = normalizer(country::Id::GB);
        assert_eq!(gb.international.national("07400123456"), Fast::Parse);
        // The region's country code without `+`, as Kannel passes `to=`.
        let n = nl();
        assert_eq!(
            n.international.national("31612345678"),
            Fast::E164("+31612345678".into())
        );
        assert_eq!(n.parse_e164("31612345678").as_deref(), Some("+31612345678"));
        // What the parser may read otherwise goes to it.
        for raw in [
            "310612345678",
            "00612345678",
            "00031612345678",
            "0012",
            "",
            "06",
        ] {
            assert_eq!(n.international.national(raw), Fast::Parse, "{raw}");
        }
    }

    #[test]
    fn numbers_normalise_to_e164_or_raw() {
        let cases = [
            ("+31612345678", Form::E164, "+31612345678"),
            ("0612345678", Form::E164, "+31612345678"),
            ("06-1234 5678", Form::E164, "+31612345678"),
            ("+31 (0)6 12345678", Form::E164, "+31612345678"),
            ("0031612345678", Form::E164, "+31612345678"),
            ("+44 20 7946 0958", Form::E164, "+442079460958"),
            ("ACME", Form::Raw, "ACME"),
            ("12", Form::Raw, "12"),
            // Too short for a mobile number, but a length NL numbers can have: the
            // fast path calls it E.164 without asking the numbering plan; the value is
            // the raw form either way.
            ("  +31 6 1234  ", Form::E164, "+3161234"),
            ("  +31 6 12  ", Form::Raw, "+31612"),
        ];
        for (input, form, value) in cases {
            let id = nl().normalize(input);
            assert_eq!(
                (id.form, id.value.as_str()),
                (form, value),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn international_numbers_take_the_fast_path() {
        let n = nl();
        let fast = |s: &str| n.international.classify(&canonical_raw(s));
        assert_eq!(fast("+31612345678"), Fast::E164("+31612345678".into()));
        assert_eq!(fast("0031 6 12345678"), Fast::E164("+31612345678".into()));
        assert_eq!(fast("+44 20 7946 0958"), Fast::E164("+442079460958".into()));
        // The national prefix after the code, national format, letters, an unused
        // code, an impossible length: the parser decides.
        assert_eq!(fast("+31 (0)6 12345678"), Fast::Parse);
        // National format: the national fast path.
        assert_eq!(fast("0612345678"), Fast::E164("+31612345678".into()));
        assert_eq!(fast("+31ABC"), Fast::Parse);
        assert_eq!(fast("+999123456789"), Fast::Parse);
        assert_eq!(fast("+316123"), Fast::Parse);
        // A region whose international prefix is not 00 reads 00 as national digits.
        let us = NumberNormalizer::new(country::Id::US);
        assert_eq!(us.international.classify("0044207946095"), Fast::Parse);
    }

    #[test]
    fn email_is_sealed_as_sent_and_indexed_by_its_domain() {
        let id = normalize_email(" <Jan.Jansen@Example.NL>");
        assert_eq!(id.form, Form::Email);
        assert_eq!(id.value, "Jan.Jansen@Example.NL");
        assert_eq!(id.index_value(), "Jan.Jansen@example.nl");
        assert_eq!(normalize_email("nobody").form, Form::Raw);
        assert_eq!(normalize_email("@example.nl").form, Form::Raw);
        // U-labels and A-labels of one domain are one address; the local part keeps
        // its case and its UTF-8 (SMTPUTF8).
        let u = normalize_email("Jürgen@Bücher.Example");
        let a = normalize_email("Jürgen@xn--bcher-kva.example");
        assert_eq!(u.index_value(), a.index_value());
        assert_eq!(u.index_value(), "Jürgen@xn--bcher-kva.example");
        assert_ne!(
            u.index_value(),
            normalize_email("jürgen@bücher.example").index_value()
        );
        // Quotes a local part does not need, and the root's dot, change nothing.
        assert_eq!(email_index_form("\"jan\"@Example.NL."), "jan@example.nl");
        assert_eq!(email_index_form("\"j\\an\"@example.nl"), "jan@example.nl");
        assert_eq!(
            email_index_form("\"jan jansen\"@example.nl"),
            "\"jan jansen\"@example.nl"
        );
        assert_eq!(
            email_index_form("\"jan\\ jansen\"@example.nl"),
            "\"jan jansen\"@example.nl"
        );
        assert_eq!(
            email_index_form("\"a..b\"@example.nl"),
            "\"a..b\"@example.nl"
        );
        // A domain IDNA refuses is still indexed, lower-cased.
        assert_eq!(email_index_form("a@\u{301}É.Example"), "a@\u{301}É.example");
    }

    #[test]
    fn mapped_ipv6_is_ipv4() {
        let ip: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(canonical_ip(ip).to_string(), "203.0.113.7");
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical_ip(ip), ip);
    }

    #[test]
    fn long_input_is_capped_at_a_char_boundary() {
        let long = "é".repeat(400);
        assert!(canonical_account(&long).len() <= MAX_IDENTIFIER_BYTES);
        assert!(canonical_raw(&long).len() <= MAX_IDENTIFIER_BYTES);
    }

    /// fuzz/artifacts/stored_values/crash-3dc8e72667586ccc01da8f0b3a5042b123daf0b9:
    /// white space was trimmed before the separators were taken off, so white space
    /// that a separator had kept from the end stayed, and went at the next
    /// normalisation: the value a record is indexed by and the one a query for that
    /// value computes differed.
    #[test]
    fn crash_3dc8e726_raw_forms_lose_white_space_the_separators_kept() {
        let n = nl();
        let once = n.normalize("\u{1}\u{0}123\u{b}\u{b}\u{b}/");
        assert_eq!(once.value, "\u{1}\u{0}123");
        assert_eq!(n.normalize(&once.value), once);
        assert_eq!(canonical_raw("/ \u{a0}+31 6 12 \u{3000}-"), "+31612");
    }

    /// fuzz/artifacts/stored_values/crash-e71379a10d9961e341dde0cc249cf18735ddbc8e:
    /// `003900030661` read in NL is an Italian number with three leading zeros, which
    /// phonenumber formats as `+39030661`, a number it does not hold valid: the first
    /// normalisation gave E.164, the second raw. A form that does not read back as
    /// itself is not taken.
    #[test]
    fn crash_e71379a1_number_normalisation_is_idempotent() {
        let n = NumberNormalizer::new(country::Id::NL);
        for input in ["003900030661", "+39 00030661", "0039030661"] {
            let once = n.normalize(input);
            assert_eq!(n.normalize(&once.value), once, "{input:?}");
        }
        assert_eq!(n.normalize("003900030661").form, Form::Raw);
        // A valid number still gets its E.164 form through the parser.
        assert_eq!(
            n.normalize("0031612345678"),
            Identifier {
                form: Form::E164,
                value: "+31612345678".into()
            }
        );
    }

    /// fuzz/artifacts/stored_values/crash-22dce377bb8632d73b961d3153b9f8ac3654d927:
    /// white space was trimmed before the angle brackets, so `<\t\t<` kept the tabs
    /// that the second normalisation then took off.
    #[test]
    fn crash_22dce377_email_normalisation_is_idempotent() {
        for input in ["<\t\t\t\t\t<", " < <a@b.example> > ", "a@b.example>\t>"] {
            let once = normalize_email(input);
            assert_eq!(normalize_email(&once.value), once, "{input:?}");
        }
        assert_eq!(normalize_email("<\t\t\t\t\t<").value, "");
        assert_eq!(normalize_email(" < <a@b.example> > ").value, "a@b.example");
        // Cut at the cap, then trimmed again.
        let long = format!("{}  x@y.example", "a".repeat(MAX_IDENTIFIER_BYTES - 1));
        let once = normalize_email(&long);
        assert_eq!(normalize_email(&once.value), once);
    }

    /// fuzz/artifacts/stored_values/crash-c2e2b48403fee705ca0b132a5b61d8cca41a1602:
    /// one trailing dot of a domain was taken off at a time, so the index form of an
    /// index form differed (and a domain IDNA maps to end in a dot kept it).
    #[test]
    fn crash_c2e2b484_the_index_form_of_an_index_form_is_itself() {
        for address in [
            "@^^^95^$\u{2e1}4\r......",
            "a@b.example..",
            "a@b\u{e9}.example\u{3002}",
            "a@B.example.",
        ] {
            let once = email_index_form(address).into_owned();
            assert_eq!(email_index_form(&once), once, "{address:?}");
        }
        assert_eq!(email_index_form("a@B.Example.."), "a@b.example");
        assert_eq!(
            email_index_form("a@b\u{e9}.example\u{3002}"),
            "a@xn--b-bga.example"
        );
    }

    proptest! {
        #[test]
        fn email_normalisation_is_idempotent(s in "[ \t<>a-zA-Z@.\u{e9}\u{3002}]{0,300}") {
            let once = normalize_email(&s);
            prop_assert_eq!(normalize_email(&once.value), once.clone());
            let indexed = email_index_form(&once.value).into_owned();
            prop_assert_eq!(email_index_form(&indexed).into_owned(), indexed);
        }

        #[test]
        fn number_normalisation_is_idempotent(s in "[+0-9 ()./A-Za-z\t\n\x0b\u{a0}\u{3000}-]{0,24}") {
            let n = nl();
            let once = n.normalize(&s);
            let twice = n.normalize(&once.value);
            prop_assert_eq!(once, twice);
        }

        /// The fast path against the full parser, for numbers in international
        /// format across several numbering plans: wherever the parser gives an E.164
        /// form, the fast path gives the same value (or defers to the parser); where
        /// the parser finds no number, the fast path's value is the raw form itself.
        #[test]
        fn fast_path_agrees_with_the_parser(
            prefix in prop::sample::select(vec!["+", "00"]),
            code in prop::sample::select(vec!["31", "49", "44", "1", "33", "39", "7", "86", "91", "358", "998", "999"]),
            national in "[0-9]{0,14}",
        ) {
            let n = nl();
            let raw = format!("{prefix}{code}{national}");
            if let Fast::E164(fast) = n.international.classify(&raw) {
                match n.parse_e164(&raw) {
                    Some(parsed) => prop_assert_eq!(&fast, &parsed),
                    None => prop_assert_eq!(fast, format!("+{code}{national}")),
                }
            }
        }

        /// The national-format fast path against the full parser, in several
        /// numbering plans: wherever it gives an E.164 form, the parser gives the same.
        #[test]
        fn national_fast_path_agrees_with_the_parser(
            region in prop::sample::select(vec![
                country::Id::NL, country::Id::DE, country::Id::GB, country::Id::FR,
                country::Id::BE, country::Id::IT, country::Id::US, country::Id::CH,
                country::Id::IL, country::Id::UY, country::Id::NZ, country::Id::KE,
            ]),
            prefix in prop::sample::select(vec![
                "", "0", "00", "1", "31", "49", "33", "32", "39", "41", "310", "490",
                "019", "012", "0198", "013", "972", "598", "64", "254",
            ]),
            national in "6[0-9]{8}|[1-9][0-9]{1,2}[0-9]{4,9}|[0-9]{1,15}",
        ) {
            let n = normalizer(region);
            let raw = format!("{prefix}{national}");
            if let Fast::E164(fast) = n.international.national(&raw) {
                prop_assert_eq!(Some(fast), n.parse_e164(&raw), "{:?} {}", region, raw);
            }
        }

        #[test]
        fn digits_only_numbers_are_idempotent(s in "\\+?[0-9]{3,16}") {
            let n = nl();
            let once = n.normalize(&s);
            prop_assert_eq!(n.normalize(&once.value), once);
        }
    }

    /// The generated tables are the metadata's, for every region: regenerate them with
    /// `REGENERATE=src/canonical_tables.rs cargo test --lib canonical_tables_are_the_metadatas`
    /// when `phonenumber` is updated.
    #[test]
    fn canonical_tables_are_the_metadatas() {
        if let Ok(path) = std::env::var("REGENERATE") {
            std::fs::write(path, generate_tables()).unwrap();
        }
        let db = &*phonenumber::metadata::DATABASE;
        let mut regions = 0;
        for meta in db.iter() {
            let Ok(region) = meta.id().parse::<country::Id>() else {
                continue;
            };
            regions += 1;
            assert_eq!(
                Facts::of_tables(region),
                Facts::of_metadata(region),
                "{}",
                meta.id()
            );
        }
        assert!(regions > 200, "{regions}");
    }

    fn generate_tables() -> String {
        let db = &*phonenumber::metadata::DATABASE;
        let facts = Facts::of_metadata(country::Id::NL);
        let mut out = String::from(
            "//! Generated from `phonenumber`'s metadata by `canonical::tests::canonical_tables_are_the_metadatas`\n\
             //! (which also checks them against it): do not edit.\n\n\
             /// Possible lengths of the national significant number per country calling code.\n\
             pub static LENGTHS: &[(u16, &[u16])] = &[\n",
        );
        for (code, lengths) in facts.lengths.iter().enumerate() {
            if !lengths.is_empty() {
                out.push_str(&format!("    ({code}, &{lengths:?}),\n"));
            }
        }
        out.push_str(
            "];\n\n/// Per region: its id, national prefix, national prefix for parsing and\n\
             /// international prefix (the last two patterns, as text).\n\
             #[allow(clippy::type_complexity)]\n\
             pub static REGIONS: &[(&str, Option<&str>, Option<&str>, Option<&str>)] = &[\n",
        );
        let mut rows: Vec<String> = db
            .iter()
            .filter(|m| m.id().parse::<country::Id>().is_ok())
            .map(|m| {
                format!(
                    "    ({:?}, {:?}, {:?}, {:?}),\n",
                    m.id(),
                    m.national_prefix(),
                    m.national_prefix_for_parsing().map(|r| r.as_str()),
                    m.international_prefix().map(|r| r.as_str())
                )
            })
            .collect();
        rows.sort();
        rows.dedup();
        out.extend(rows);
        out.push_str("];\n");
        out
    }
}
