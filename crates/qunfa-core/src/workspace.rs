//! Workspaces, their kinds and the roles of their members.

use crate::Code;

/// The account tier of a workspace. Limits come from the policy per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkspaceKind {
    Personal,
    Enterprise,
    Api,
}

impl WorkspaceKind {
    pub fn parse(s: &str) -> Result<Self, Code> {
        match s {
            "personal" => Ok(Self::Personal),
            "enterprise" => Ok(Self::Enterprise),
            "api" => Ok(Self::Api),
            _ => Err(Code::InvalidKind),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Personal => "personal",
            Self::Enterprise => "enterprise",
            Self::Api => "api",
        }
    }
}

/// What a member (and the API keys issued to it) may do in its workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Owner,
    Admin,
    Sender,
    Reviewer,
    Auditor,
    Viewer,
}

/// Actions checked against a role. Reading is allowed to every role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create, change or delete contacts, tags, departments, media.
    ManageContacts,
    /// Compose and send broadcasts. (Preflight is a read: every role that can
    /// see a broadcast may ask why it would be blocked.)
    Send,
    /// Approve or reject broadcasts that wait for approval.
    Approve,
    /// Create members and API keys.
    ManageMembers,
    /// Read the audit log and export evidence.
    Audit,
    /// Read contacts, broadcasts and reports.
    Read,
    /// Schedule broadcasts and set quiet hours (admins and owners).
    Schedule,
}

impl Role {
    pub fn parse(s: &str) -> Result<Self, Code> {
        match s {
            "owner" => Ok(Self::Owner),
            "admin" => Ok(Self::Admin),
            "sender" => Ok(Self::Sender),
            "reviewer" => Ok(Self::Reviewer),
            "auditor" => Ok(Self::Auditor),
            "viewer" => Ok(Self::Viewer),
            _ => Err(Code::InvalidRole),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Sender => "sender",
            Self::Reviewer => "reviewer",
            Self::Auditor => "auditor",
            Self::Viewer => "viewer",
        }
    }

    /// Whether this role may perform `action`.
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Owner => true,
            Role::Admin => true,
            Role::Sender => matches!(action, ManageContacts | Send | Read),
            Role::Reviewer => matches!(action, Approve | Read),
            Role::Auditor => matches!(action, Audit | Read),
            Role::Viewer => matches!(action, Read),
        }
    }

    /// Whether this role may create a member with role `other` (no escalation).
    pub fn may_grant(self, other: Role) -> bool {
        match self {
            Role::Owner => true,
            Role::Admin => other != Role::Owner,
            _ => false,
        }
    }
}

/// A validated display name (workspace, member, department): 1–128 characters
/// after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(s: &str) -> Result<Self, Code> {
        let s = s.trim();
        let n = s.chars().count();
        if n == 0 || n > 128 || s.chars().any(char::is_control) {
            return Err(Code::InvalidName);
        }
        Ok(Name(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        assert!(Role::Sender.allows(Action::Send));
        assert!(!Role::Sender.allows(Action::Approve));
        assert!(!Role::Viewer.allows(Action::ManageContacts));
        assert!(Role::Reviewer.allows(Action::Approve));
        assert!(!Role::Admin.may_grant(Role::Owner));
        assert!(Role::Admin.allows(Action::Schedule) && !Role::Sender.allows(Action::Schedule));
        assert_eq!(Role::parse("root"), Err(Code::InvalidRole));
    }

    #[test]
    fn names() {
        assert_eq!(Name::parse("  华东区 ").unwrap().as_str(), "华东区");
        assert!(Name::parse("").is_err());
        assert!(Name::parse(&"x".repeat(129)).is_err());
        assert!(Name::parse("a\u{0}b").is_err());
    }
}
