//! What a rule can see of a request, borrowed from it without copies.
use http::HeaderMap;

/// A request as rules see it. `body` is at most the configured prefix of the
/// body (empty when no rule of the destination reads the body).
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Raw query string without `?`.
    pub query: Option<&'a str>,
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// True when `body` is cut at the bound (JSON then may not parse).
    pub body_truncated: bool,
}

impl<'a> RequestView<'a> {
    /// All values of a header, each as text (invalid UTF-8 values are skipped).
    pub fn header_values(&self, name: &http::HeaderName) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
    }

    /// All values of a query parameter, percent-decoded (`+` is a space).
    pub fn query_values(&self, name: &str) -> Vec<String> {
        let Some(query) = self.query else {
            return Vec::new();
        };
        form_pairs(query.as_bytes())
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect()
    }

    /// All values of a cookie across every `Cookie` header. Spaces around
    /// `;` and `=` are tolerated, as browsers and servers do.
    pub fn cookie_values(&self, name: &str) -> Vec<&'a str> {
        let mut out = Vec::new();
        for header in self.header_values(&http::header::COOKIE) {
            for pair in header.split(';') {
                if let Some((k, v)) = pair.split_once('=')
                    && k.trim() == name
                {
                    out.push(v.trim().trim_matches('"'));
                }
            }
        }
        out
    }

    pub fn content_type(&self) -> Option<&'a str> {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }
}

/// `application/x-www-form-urlencoded` pairs, decoded.
pub(crate) fn form_pairs(input: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    input
        .split(|b| *b == b'&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = match part.iter().position(|b| *b == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &b""[..]),
            };
            (percent_decode(k), percent_decode(v))
        })
}

fn percent_decode(input: &[u8]) -> String {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    input.get(i + 1).and_then(|b| hex(*b)),
                    input.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_pairs_decode() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("a=1&b=2", &[("a", "1"), ("b", "2")]),
            ("a=1&a=2", &[("a", "1"), ("a", "2")]),
            ("flag&x=", &[("flag", ""), ("x", "")]),
            ("n=a%20b+c", &[("n", "a b c")]),
            ("bad=%zz%4", &[("bad", "%zz%4")]),
            ("u%73erId=7", &[("userId", "7")]),
            ("", &[]),
        ];
        for (input, want) in cases {
            let got: Vec<(String, String)> = form_pairs(input.as_bytes()).collect();
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(got, want, "input {input:?}");
        }
    }
}
