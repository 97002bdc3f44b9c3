//! What brig ships: the default deny-list of exfiltration targets and the
//! named allow presets. docs/EGRESS.md lists the same (a test keeps them in
//! step).
//!
//! The deny-list is not what keeps a session in: default deny does that. It
//! is what keeps a *broad* allow rule (`*.amazonaws.com`, `*.google.com`,
//! `*.github.com`) from also opening the places where anyone can drop data
//! and read it back from outside. Each class says why it is there.

/// A shipped rule: a name (the rule id), why it exists, and its domains
/// (`example.com` exact, `*.example.com` everything under it).
#[derive(Clone, Copy, Debug)]
pub struct ShippedRule {
    pub name: &'static str,
    pub why: &'static str,
    pub domains: &'static [&'static str],
}

/// The default deny-list (`[egress] default_deny_list = true`).
pub const DEFAULT_DENY: &[ShippedRule] = &[
    ShippedRule {
        name: "exfil/pastebins",
        why: "public paste sites take anonymous text uploads that anyone can read back",
        domains: &[
            "pastebin.com", "*.pastebin.com", "paste.ee", "hastebin.com", "*.hastebin.com",
            "dpaste.com", "dpaste.org", "paste.debian.net", "termbin.com", "ix.io", "sprunge.us", "paste.rs", "rentry.co",
            "rentry.org", "controlc.com", "justpaste.it", "privatebin.net", "*.privatebin.net", "paste.mozilla.org",
            "paste.centos.org", "bpa.st", "pastie.org", "ghostbin.com", "ghostbin.co", "paste.gg", "pastes.dev",
            "katb.in", "glot.io", "ideone.com", "codepad.org", "gist.github.com", "0bin.net", "paste.org", "pastelink.net",
        ],
    },
    ShippedRule {
        name: "exfil/file-drops",
        why: "anonymous file-sharing services: one upload, a public download link",
        domains: &[
            "transfer.sh", "*.transfer.sh", "file.io", "*.file.io", "0x0.st", "temp.sh", "bashupload.com", "oshi.at",
            "keep.sh", "free.keep.sh", "tmpfiles.org", "filebin.net", "*.filebin.net", "gofile.io", "*.gofile.io",
            "catbox.moe", "*.catbox.moe", "uguu.se", "*.uguu.se", "pixeldrain.com", "*.pixeldrain.com", "wetransfer.com",
            "*.wetransfer.com", "we.tl", "sendspace.com", "*.sendspace.com", "mega.nz", "*.mega.nz", "mega.io",
            "*.mega.io", "mediafire.com", "*.mediafire.com", "anonfiles.com", "ufile.io", "files.fm", "*.files.fm",
            "filetransfer.io", "send.vis.ee", "wormhole.app", "krakenfiles.com", "buzzheavier.com", "easyupload.io",
        ],
    },
    ShippedRule {
        name: "exfil/request-bins",
        why: "request inspectors and out-of-band callback services record whatever is sent to them",
        domains: &[
            "webhook.site", "*.webhook.site", "requestbin.com", "*.requestbin.com", "requestbin.net", "*.requestbin.net",
            "pipedream.net", "*.pipedream.net", "requestcatcher.com", "*.requestcatcher.com", "beeceptor.com",
            "*.beeceptor.com", "hookbin.com", "*.hookbin.com", "postb.in", "*.postb.in", "ptsv2.com", "ptsv3.com",
            "requestrepo.com", "*.requestrepo.com", "mockbin.org", "*.mockbin.org", "mockbin.io", "*.mockbin.io",
            "interact.sh", "*.interact.sh", "oast.fun", "*.oast.fun", "oast.pro", "*.oast.pro", "oast.live",
            "*.oast.live", "oast.site", "*.oast.site", "oast.online", "*.oast.online", "oast.me", "*.oast.me",
            "burpcollaborator.net", "*.burpcollaborator.net", "oastify.com", "*.oastify.com", "canarytokens.com",
            "*.canarytokens.com", "canarytokens.org", "*.canarytokens.org", "dnslog.cn", "*.dnslog.cn", "ceye.io",
            "*.ceye.io", "webhook.cool", "*.webhook.cool", "typedwebhook.tools", "*.typedwebhook.tools",
        ],
    },
    ShippedRule {
        name: "exfil/tunnels",
        why: "public tunnels expose a listener anywhere on the internet behind a fresh name",
        domains: &[
            "ngrok.io", "*.ngrok.io", "ngrok.app", "*.ngrok.app", "ngrok.dev", "*.ngrok.dev", "ngrok-free.app",
            "*.ngrok-free.app", "ngrok-free.dev", "*.ngrok-free.dev", "ngrok.com", "*.ngrok.com", "ngrok-agent.com",
            "*.ngrok-agent.com", "ngrok.pizza", "*.ngrok.pizza", "loca.lt", "*.loca.lt", "localtunnel.me",
            "*.localtunnel.me", "trycloudflare.com", "*.trycloudflare.com", "serveo.net", "*.serveo.net",
            "serveousercontent.com", "*.serveousercontent.com", "localhost.run", "*.localhost.run", "lhr.life",
            "*.lhr.life", "lhr.rocks", "*.lhr.rocks", "pagekite.me", "*.pagekite.me", "bore.pub", "*.bore.pub",
            "pinggy.io", "*.pinggy.io", "pinggy.link", "*.pinggy.link", "pinggy.online", "*.pinggy.online",
            "tunnelmole.com", "*.tunnelmole.com", "tunnelmole.net", "*.tunnelmole.net", "devtunnels.ms",
            "*.devtunnels.ms", "loclx.io", "*.loclx.io", "localxpose.io", "*.localxpose.io", "loophole.site",
            "*.loophole.site", "zrok.io", "*.zrok.io", "playit.gg", "*.playit.gg", "telebit.cloud", "*.telebit.cloud",
            "expose.dev", "*.sharedwithexpose.com", "packetriot.com", "*.packetriot.net",
        ],
    },
    ShippedRule {
        name: "exfil/object-storage",
        why: "wildcard object-storage hosts: anyone can create a bucket and write to it with their own credentials",
        domains: &[
            "s3.amazonaws.com", "*.s3.amazonaws.com", "s3-external-1.amazonaws.com", "*.s3-external-1.amazonaws.com",
            "*.s3-accesspoint.amazonaws.com", "*.s3-website.amazonaws.com", "*.s3-object-lambda.amazonaws.com",
            "blob.core.windows.net", "*.blob.core.windows.net", "*.dfs.core.windows.net", "*.file.core.windows.net",
            "*.queue.core.windows.net", "*.table.core.windows.net", "*.web.core.windows.net",
            "storage.googleapis.com", "*.storage.googleapis.com", "storage.cloud.google.com",
            "*.storage.cloud.google.com", "firebasestorage.googleapis.com", "*.firebasestorage.app",
            "*.r2.cloudflarestorage.com", "*.r2.dev", "*.digitaloceanspaces.com",
            "*.backblazeb2.com", "*.wasabisys.com", "*.linodeobjects.com", "*.objectstorage.oraclecloud.com",
            "*.cloud-object-storage.appdomain.cloud", "*.scw.cloud", "*.cellar-c2.services.clever-cloud.com",
        ],
    },
    ShippedRule {
        name: "exfil/chat-webhooks",
        why: "chat bot and webhook APIs deliver whatever is posted to a channel someone else reads",
        domains: &[
            "hooks.slack.com", "api.telegram.org", "discord.com", "*.discord.com", "discordapp.com", "*.discordapp.com",
            "discord.gg", "*.webhook.office.com", "maker.ifttt.com", "hooks.zapier.com",
        ],
    },
];

/// AWS regions whose regional S3 endpoint names join
/// `exfil/object-storage` (generated, see [`regional_object_storage`]).
const AWS_REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-south-1",
    "ap-south-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "eu-central-1",
    "eu-central-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-gov-east-1",
    "us-gov-west-1",
    "cn-north-1",
    "cn-northwest-1",
];

/// The regional S3 names (`s3.<region>.amazonaws.com`,
/// `s3.dualstack.<region>...`, `s3-<region>...`, `s3-website...`, with and
/// without a bucket label in front), which a leading-`*.` pattern cannot
/// cover in one rule.
pub fn regional_object_storage() -> Vec<String> {
    let mut out = Vec::with_capacity(AWS_REGIONS.len() * 10);
    for r in AWS_REGIONS {
        let tld = if r.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        for form in [
            format!("s3.{r}.{tld}"),
            format!("s3.dualstack.{r}.{tld}"),
            format!("s3-{r}.{tld}"),
            format!("s3-website-{r}.{tld}"),
            format!("s3-website.{r}.{tld}"),
        ] {
            out.push(format!("*.{form}"));
            out.push(form);
        }
    }
    out
}

/// A named allow preset: a set of allow rules a profile turns on by name
/// (`presets = ["registries"]`).
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub why: &'static str,
    pub rules: &'static [PresetRule],
}

/// One allow rule of a preset. Ports are the policy's default ports
/// unless given.
#[derive(Clone, Copy, Debug)]
pub struct PresetRule {
    pub name: &'static str,
    pub domains: &'static [&'static str],
    pub ports: Option<&'static [u16]>,
}

/// The shipped presets.
pub const PRESETS: &[Preset] = &[Preset {
    name: "registries",
    why: "package registries that builds and tests fetch dependencies from",
    rules: &[
        PresetRule {
            name: "registries/crates-io",
            domains: &["crates.io", "index.crates.io", "static.crates.io"],
            ports: Some(&[443]),
        },
        PresetRule {
            name: "registries/pypi",
            domains: &["pypi.org", "files.pythonhosted.org"],
            ports: Some(&[443]),
        },
        PresetRule {
            name: "registries/npm",
            domains: &["registry.npmjs.org"],
            ports: Some(&[443]),
        },
        // apt fetches over plain HTTP by default (the archive is signed).
        PresetRule {
            name: "registries/debian",
            domains: &["deb.debian.org", "security.debian.org"],
            ports: None,
        },
        PresetRule {
            name: "registries/go",
            domains: &["proxy.golang.org", "sum.golang.org"],
            ports: Some(&[443]),
        },
        PresetRule {
            name: "registries/maven-central",
            domains: &["repo.maven.apache.org", "repo1.maven.org"],
            ports: Some(&[443]),
        },
        PresetRule {
            name: "registries/rubygems",
            domains: &["rubygems.org", "index.rubygems.org"],
            ports: Some(&[443]),
        },
    ],
}];

/// A preset by name.
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}
