//! A user's devices (its tokens), served through the Raft core in the user's partition:
//! listed by a read at the leader, one logged out by a `RevokeDevice` command (then the
//! sessions logged in with it are closed on every node), a login's time recorded by a
//! `TouchToken` command. What each does to the records is `chat_state::devices`.

use super::{Served, unexpected, unexpected_outcome};
use crate::error::ChatError;
use crate::partition;
use crate::request::DeviceMsg;
use chat_protocol::internal::UserPush;
use chat_protocol::internal::answer::A;
use chat_protocol::internal::command::{self, Op};
use chat_protocol::internal::outcome;
use chat_protocol::internal::query::{self, Q};
use std::sync::Arc;

/// What the closed sessions of a device are told.
pub const LOGGED_OUT: &str = "this device was logged out: log in again";

impl Served {
    pub(super) fn devices(self: &Arc<Self>, user: String, msg: DeviceMsg) {
        let p = partition::of_user(&user);
        match msg {
            DeviceMsg::List { now_ms, reply } => {
                let q = Q::Devices(query::DevicesOf { user, now_ms });
                self.read(p, q, move |r| {
                    reply(r.and_then(|a| match a {
                        A::Devices(list) => Ok(list),
                        other => Err(unexpected(&other)),
                    }))
                });
            }
            DeviceMsg::LogOut { device, reply } => {
                let op = Op::RevokeDevice(command::RevokeDevice {
                    user: user.clone(),
                    device: device.clone(),
                });
                let remote = self.remote.clone();
                self.propose(p, op, move |r| match r {
                    Ok(outcome::Result::Done(_)) => {
                        remote.push_everywhere(UserPush {
                            user,
                            seq: 0,
                            frame: Vec::new(),
                            skip_session: 0,
                            log_out: LOGGED_OUT.into(),
                            log_out_device: device,
                        });
                        reply(Ok(()));
                    }
                    Ok(outcome::Result::NotFound(_)) => {
                        reply(Err(ChatError::NotFound(format!("device {device}"))))
                    }
                    Ok(other) => reply(Err(unexpected_outcome(&other))),
                    Err(e) => reply(Err(e)),
                });
            }
            DeviceMsg::Touch { token, at_ms, reply } => {
                let op = Op::TouchToken(command::TouchToken { user, token, at_ms });
                self.propose(p, op, move |r| match r {
                    Ok(outcome::Result::Done(_)) => reply(Ok(())),
                    Ok(outcome::Result::NotFound(_)) => reply(Err(ChatError::NotFound("token".into()))),
                    Ok(other) => reply(Err(unexpected_outcome(&other))),
                    Err(e) => reply(Err(e)),
                });
            }
        }
    }
}
