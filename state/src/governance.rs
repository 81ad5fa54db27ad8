//! Who may do what in a group: roles (owner, admins, members), private groups joined
//! by invitation, bans. Pure rules; [`crate::machine`] applies them to a group's
//! records in the group's partition, so every decision is in the group's order.

use chat_protocol::v1::GroupRole;

/// What a member does to a group or to another user in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Invite a user.
    Invite = 1,
    /// Remove a member.
    Remove = 2,
    /// Remove (if a member) and keep out.
    Ban = 3,
    /// Let a banned user in again.
    Unban = 4,
    /// Make a member an admin or an admin a member.
    SetRole = 5,
    /// Hand ownership over.
    Transfer = 6,
    /// Change the title, topic or history setting.
    SetInfo = 7,
    /// Delete the group.
    Delete = 8,
}

impl Action {
    /// The action of a command's number.
    pub fn from_number(n: u32) -> Option<Self> {
        use Action::*;
        [Invite, Remove, Ban, Unban, SetRole, Transfer, SetInfo, Delete]
            .into_iter()
            .find(|a| *a as u32 == n)
    }
}

/// Why an action is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The actor is no member.
    NotAMember,
    /// The target must be a member and is not.
    TargetNotAMember,
    /// The actor's role does not allow it (the reason, in words).
    Forbidden(&'static str),
}

fn rank(role: GroupRole) -> u8 {
    match role {
        GroupRole::Member => 0,
        GroupRole::Admin => 1,
        GroupRole::Owner => 2,
    }
}

/// Whether `actor` (with `actor_role`, `None` for no member) may do `action` to a user
/// with `target_role` (`None`: not a member) in a group that is `private`. `new_role`
/// is what SetRole asks for.
pub fn may(
    action: Action,
    actor_role: Option<GroupRole>,
    target_role: Option<GroupRole>,
    private: bool,
    new_role: GroupRole,
) -> Result<(), Refusal> {
    let Some(actor) = actor_role else {
        return Err(Refusal::NotAMember);
    };
    let admin = rank(actor) >= rank(GroupRole::Admin);
    let owner = actor == GroupRole::Owner;
    let outranks = |target: Option<GroupRole>| target.is_none_or(|t| rank(actor) > rank(t));
    match action {
        Action::Invite if private && !admin => {
            Err(Refusal::Forbidden("only admins invite to a private group"))
        }
        Action::Invite => Ok(()),
        Action::Remove if target_role.is_none() => Err(Refusal::TargetNotAMember),
        Action::Remove | Action::Ban if !admin => {
            Err(Refusal::Forbidden("only admins remove or ban members"))
        }
        Action::Remove | Action::Ban if !outranks(target_role) => {
            Err(Refusal::Forbidden("only a higher role removes or bans"))
        }
        Action::Remove | Action::Ban => Ok(()),
        Action::Unban | Action::SetInfo if !admin => Err(Refusal::Forbidden("only admins do this")),
        Action::Unban | Action::SetInfo => Ok(()),
        Action::SetRole | Action::Transfer | Action::Delete if !owner => {
            Err(Refusal::Forbidden("only the owner does this"))
        }
        Action::SetRole | Action::Transfer if target_role.is_none() => Err(Refusal::TargetNotAMember),
        Action::SetRole if target_role == Some(GroupRole::Owner) || new_role == GroupRole::Owner => {
            Err(Refusal::Forbidden("ownership is handed over with a transfer"))
        }
        Action::Transfer if target_role == Some(GroupRole::Owner) => {
            Err(Refusal::Forbidden("already the owner"))
        }
        Action::SetRole | Action::Transfer | Action::Delete => Ok(()),
    }
}

/// Whether a user may join: not when banned; a private group only with an invitation.
pub fn may_join(private: bool, invited: bool, banned: bool) -> Result<(), &'static str> {
    if banned {
        Err("you are banned from this group")
    } else if private && !invited {
        Err("this group is private: join it by invitation")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GroupRole::{Admin, Member, Owner};

    const ROLES: [Option<GroupRole>; 4] = [None, Some(Member), Some(Admin), Some(Owner)];
    const ACTIONS: [Action; 8] = [
        Action::Invite,
        Action::Remove,
        Action::Ban,
        Action::Unban,
        Action::SetRole,
        Action::Transfer,
        Action::SetInfo,
        Action::Delete,
    ];

    #[test]
    fn roles_are_enforced_for_every_action() {
        for action in ACTIONS {
            for actor in ROLES {
                for target in ROLES {
                    for private in [false, true] {
                        let allowed = may(action, actor, target, private, Admin).is_ok();
                        let a = actor.map(rank);
                        let t = target.map(rank);
                        let expected = match (action, a) {
                            (_, None) => false,
                            (Action::Invite, Some(a)) => !private || a >= 1,
                            (Action::Remove, Some(a)) => t.is_some() && a >= 1 && t.is_none_or(|t| a > t),
                            (Action::Ban, Some(a)) => a >= 1 && t.is_none_or(|t| a > t),
                            (Action::Unban | Action::SetInfo, Some(a)) => a >= 1,
                            (Action::SetRole, Some(a)) => a == 2 && matches!(t, Some(0 | 1)),
                            (Action::Transfer, Some(a)) => a == 2 && matches!(t, Some(0 | 1)),
                            (Action::Delete, Some(a)) => a == 2,
                        };
                        assert_eq!(
                            allowed, expected,
                            "{action:?} by {actor:?} on {target:?}, private {private}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn nobody_is_made_owner_by_a_role_change() {
        assert!(may(Action::SetRole, Some(Owner), Some(Member), false, Owner).is_err());
    }

    #[test]
    fn bans_and_private_groups_keep_people_out() {
        assert!(may_join(false, false, false).is_ok());
        assert!(may_join(true, true, false).is_ok());
        assert!(may_join(true, false, false).is_err());
        assert!(may_join(false, true, true).is_err());
        assert_eq!(Action::from_number(8), Some(Action::Delete));
        assert_eq!(Action::from_number(9), None);
    }
}
