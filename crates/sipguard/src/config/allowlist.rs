//! The allowlist file (docs/design.md section 4): named groups of carrier and office networks, in
//! categories the operator names (`carriers`, `offices`, ...), kept apart from the main config so
//! it can be generated or shared across hosts.
//!
//! The file goes through the same two stages as the main one, with its own schema, and its
//! problems carry its own name and key paths (`carriers[0].cidrs[1]`); the main config's
//! validation gathers them with its own, so one run reports both files. Group names are unique
//! in the file: they name the group in logs and in rules. A group may have an `identity`, the
//! loopback address its sources reach the PBX from, so the PBX can recognise a carrier by
//! address; each identity belongs to one group. A group may also list DNS `names` (a carrier's
//! host or SRV names), which the daemon resolves into the group and keeps resolved
//! (`crate::resolve`).

use super::error::{quote, Problem, ProblemKind};
use super::feeds::is_dns_name;
use super::raw::{self, RawAllowlist};
use super::validate::parse_net;
use sipguard_policy::AllowGroup;
use std::net::IpAddr;

/// What an allowlist file lists: its groups, and the DNS names each group lists (as group name,
/// DNS name), each in file order.
pub(crate) type Listed = (Vec<AllowGroup>, Vec<(String, String)>);

/// Validates allowlist `text` (read from `origin`), pushing every problem onto `problems`.
/// Returns the groups and names only when nothing was wrong.
pub(crate) fn from_yaml(text: &str, origin: &str, problems: &mut Vec<Problem>) -> Option<Listed> {
    let before = problems.len();
    let raw = raw::parse_allowlist(text, origin, problems)?;
    let networks = validate(raw, origin, problems);
    (problems.len() == before).then_some(networks)
}

fn validate(raw: RawAllowlist, origin: &str, problems: &mut Vec<Problem>) -> Listed {
    let problem = |path: String, value: Option<&str>, expected: &str| Problem {
        kind: ProblemKind::InvalidValue,
        origin: origin.to_owned(),
        location: None,
        path,
        value: value.map(quote),
        message: format!("expected {expected}"),
    };
    let mut groups = Vec::new();
    let mut dns_names = Vec::new();
    let mut names: Vec<(String, String)> = Vec::new();
    let mut identities: Vec<(IpAddr, String)> = Vec::new();
    for (category, raw_groups) in raw.categories {
        for (i, group) in raw_groups.unwrap_or_default().into_iter().enumerate() {
            let at = format!("{category}[{i}]");
            let mut networks = Vec::new();
            let name = group.name.clone().unwrap_or_default();
            match group.name {
                None => problems.push(problem(
                    at.clone(),
                    None,
                    "a name for the group, such as name: example-carrier",
                )),
                Some(name) if name.trim().is_empty() => problems.push(problem(
                    format!("{at}.name"),
                    Some(&name),
                    "a name, such as example-carrier",
                )),
                Some(name) => {
                    let path = format!("{at}.name");
                    match names.iter().find(|(earlier, _)| *earlier == name) {
                        Some((_, earlier_path)) => problems.push(problem(
                            path,
                            Some(&name),
                            &format!("each name once in the file, and {earlier_path} is the same"),
                        )),
                        None => names.push((name, path)),
                    }
                }
            }
            for (j, dns_name) in group.names.iter().flatten().enumerate() {
                if is_dns_name(dns_name) {
                    dns_names.push((name.clone(), dns_name.clone()));
                } else {
                    problems.push(problem(
                        format!("{at}.names[{j}]"),
                        Some(dns_name),
                        "a host name or an SRV name, such as sip.carrier.example",
                    ));
                }
            }
            match group.cidrs {
                None if group.names.as_ref().is_some_and(|n| !n.is_empty()) => {}
                None => problems.push(problem(
                    at.clone(),
                    None,
                    "the group's networks, such as cidrs: [198.51.100.0/28]",
                )),
                Some(cidrs) if cidrs.is_empty() => problems.push(Problem {
                    value: Some("[]".to_owned()),
                    ..problem(
                        format!("{at}.cidrs"),
                        None,
                        "at least one network, such as 198.51.100.0/28",
                    )
                }),
                Some(cidrs) => {
                    for (j, text) in cidrs.into_iter().enumerate() {
                        match parse_net(&text) {
                            Ok(net) => networks.push(net),
                            Err(expected) => problems.push(problem(
                                format!("{at}.cidrs[{j}]"),
                                Some(&text),
                                &expected,
                            )),
                        }
                    }
                }
            }
            let identity = group.identity.and_then(|text| {
                let path = format!("{at}.identity");
                let address = match text.parse::<IpAddr>() {
                    Ok(address) if address.is_loopback() => address,
                    _ => {
                        problems.push(problem(path, Some(&text), raw::IDENTITY));
                        return None;
                    }
                };
                if let Some((_, earlier)) = identities.iter().find(|(seen, _)| *seen == address) {
                    let expected =
                        format!("an identity of this group's own, and {earlier} is the same");
                    problems.push(problem(path, Some(&text), &expected));
                    return None;
                }
                identities.push((address, path));
                Some(address)
            });
            groups.push(AllowGroup {
                name,
                networks,
                identity,
            });
        }
    }
    (groups, dns_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(text: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let nets = from_yaml(text, "allowlist.yaml", &mut problems);
        assert_eq!(problems, [], "{text}");
        let (groups, _) = nets.unwrap();
        let networks = groups.iter().flat_map(|group| &group.networks);
        networks.map(ToString::to_string).collect()
    }

    fn lines(text: &str) -> Vec<String> {
        let mut problems = Vec::new();
        assert_eq!(from_yaml(text, "allowlist.yaml", &mut problems), None);
        problems.iter().map(Problem::to_string).collect()
    }

    #[test]
    fn groups_in_categories_of_any_name_give_their_networks_in_file_order() {
        let found = networks(
            "carriers:\n  - name: example-carrier\n    cidrs: [198.51.100.0/28, 2001:db8:10::/48]\n\
             offices:\n  - name: hq\n    cidrs: [203.0.113.0/24]\n  - name: branch\n    cidrs: [192.0.2.9]\n\
             partners_2024: []\n",
        );
        assert_eq!(
            found,
            [
                "198.51.100.0/28",
                "2001:db8:10::/48",
                "203.0.113.0/24",
                "192.0.2.9/32"
            ]
        );
    }

    #[test]
    fn bare_addresses_are_single_hosts_of_either_family() {
        assert_eq!(
            networks("x:\n  - {name: a, cidrs: [\"198.51.100.1\", \"2001:db8::1\"]}\n"),
            ["198.51.100.1/32", "2001:db8::1/128"]
        );
    }

    #[test]
    fn an_empty_file_or_an_empty_category_lists_nothing() {
        assert_eq!(networks(""), Vec::<String>::new());
        assert_eq!(networks("# no carriers yet\n"), Vec::<String>::new());
        assert_eq!(networks("carriers:\noffices: []\n"), Vec::<String>::new());
    }

    #[test]
    fn every_bad_entry_is_reported_with_its_key_path() {
        let found = lines(
            "carriers:\n  - name: example-carrier\n    cidrs: [198.51.100.0/28, 198.51.100.1/24, nonsense]\n\
             offices:\n  - name: hq\n    cidrs: []\n  - cidrs: [203.0.113.0/24]\n  - name: \" \"\n\
             \x20 - name: example-carrier\n    cidrs: [\"2001:db8::/129\"]\n",
        );
        assert_eq!(
            found,
            [
                "allowlist.yaml: carriers[0].cidrs[1]: \"198.51.100.1/24\": expected a network address with no host bits set, such as 198.51.100.0/24",
                "allowlist.yaml: carriers[0].cidrs[2]: \"nonsense\": expected a network such as 192.0.2.0/24 or 2001:db8::/32, or a single address",
                "allowlist.yaml: offices[0].cidrs: []: expected at least one network, such as 198.51.100.0/28",
                "allowlist.yaml: offices[1]: expected a name for the group, such as name: example-carrier",
                "allowlist.yaml: offices[2].name: \" \": expected a name, such as example-carrier",
                "allowlist.yaml: offices[2]: expected the group's networks, such as cidrs: [198.51.100.0/28]",
                "allowlist.yaml: offices[3].name: \"example-carrier\": expected each name once in the file, and carriers[0].name is the same",
                "allowlist.yaml: offices[3].cidrs[0]: \"2001:db8::/129\": expected a network such as 192.0.2.0/24 or 2001:db8::/32, or a single address",
            ]
        );
    }

    #[test]
    fn a_group_may_list_dns_names_instead_of_or_beside_networks() {
        let mut problems = Vec::new();
        let (groups, names) = from_yaml(
            "carriers:\n  - name: a\n    names: [sip.carrier.example, _sip._udp.carrier.example]\n\
             \x20 - name: b\n    cidrs: [198.51.100.0/28]\n    names: [edge.carrier.example]\n",
            "allowlist.yaml",
            &mut problems,
        )
        .unwrap();
        assert_eq!(problems, []);
        assert_eq!(groups.len(), 2);
        assert!(groups[0].networks.is_empty());
        let names: Vec<(&str, &str)> = (names.iter())
            .map(|(group, name)| (group.as_str(), name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("a", "sip.carrier.example"),
                ("a", "_sip._udp.carrier.example"),
                ("b", "edge.carrier.example")
            ]
        );
        assert_eq!(
            lines("carriers:\n  - name: a\n    names: [\"not a name\"]\n"),
            ["allowlist.yaml: carriers[0].names[0]: \"not a name\": expected a host name or an SRV name, such as sip.carrier.example"]
        );
    }

    #[test]
    fn unknown_keys_inside_a_group_are_named_with_the_keys_allowed_there() {
        let found = lines(
            "carriers:\n  - name: a\n    cidr: [198.51.100.0/28]\n    cidrs: [198.51.100.0/28]\n",
        );
        assert_eq!(
            found,
            ["allowlist.yaml: carriers[0].cidr: unknown key, expected one of: name, cidrs, names, identity"]
        );
    }

    #[test]
    fn wrongly_shaped_allowlist_says_what_belongs_there() {
        assert_eq!(
            lines("- 198.51.100.0/28\n"),
            ["allowlist.yaml:1:1: \"- 198.51.100.0/28\": expected a mapping of categories to lists of groups, such as \
              carriers: [{name: example-carrier, cidrs: [198.51.100.0/28]}]"]
        );
        assert_eq!(
            lines("carriers: 198.51.100.0/28\n"),
            [
                "allowlist.yaml:1:11: carriers: \"198.51.100.0/28\": expected a list of groups, \
              such as [{name: example-carrier, cidrs: [198.51.100.0/28]}]"
            ]
        );
        assert_eq!(
            lines("carriers:\n  - 198.51.100.0/28\n"),
            ["allowlist.yaml:2:5: carriers[0]: \"198.51.100.0/28\": expected a mapping with the \
              keys name, cidrs, names, identity"]
        );
        assert_eq!(
            lines("carriers:\n  - name: a\n    cidrs: 198.51.100.0/28\n"),
            [
                "allowlist.yaml:3:12: carriers[0].cidrs: \"198.51.100.0/28\": expected a list of \
              networks, such as [\"198.51.100.0/28\", \"2001:db8:10::/48\"]"
            ]
        );
    }

    #[test]
    fn a_group_identity_is_a_loopback_address_of_its_own() {
        let mut problems = Vec::new();
        let (groups, _) = from_yaml(
            "carriers:\n  - {name: a, cidrs: [198.51.100.0/28], identity: 127.0.1.1}\n  \
             - {name: b, cidrs: [192.0.2.1]}\n",
            "allowlist.yaml",
            &mut problems,
        )
        .unwrap();
        assert_eq!(groups[0].identity, Some("127.0.1.1".parse().unwrap()));
        assert_eq!(groups[1].identity, None);
        assert_eq!(
            lines(
                "carriers:\n  - {name: a, cidrs: [192.0.2.1], identity: 127.0.1.1}\n  \
                 - {name: b, cidrs: [192.0.2.2], identity: 127.0.1.1}\n  \
                 - {name: c, cidrs: [192.0.2.3], identity: 192.0.2.10}\n"
            ),
            [
                "allowlist.yaml: carriers[1].identity: \"127.0.1.1\": expected an identity of \
                 this group's own, and carriers[0].identity is the same",
                "allowlist.yaml: carriers[2].identity: \"192.0.2.10\": expected a loopback \
                 address of the group's own, such as 127.0.1.1, that the PBX knows the group by",
            ]
        );
    }

    #[test]
    fn a_category_named_twice_is_refused() {
        let found = lines("carriers: []\ncarriers: []\n");
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("duplicate"), "{found:?}");
    }
}
