//! The Auth service, as etcd's with authentication disabled, which it stays: the etcd API
//! authenticates by client certificate (the cluster CA, `system:masters`), not by etcd users
//! and roles. `auth status` says disabled, `auth disable` is a no-op, and every call that
//! would enable authentication, authenticate or manage users and roles is refused with
//! `FailedPrecondition` and that reason, the code etcd gives a call it cannot take in its
//! present auth state.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{Ctx, pb};

pub struct Auth(pub Arc<Ctx>);

/// Why every other call is refused.
pub const NOT_SUPPORTED: &str =
    "etcdserver: authentication is not enabled and cannot be: capstan's etcd API authenticates client certificates of the cluster CA (O=system:masters), not etcd users and roles";

fn refused<T>() -> Result<Response<T>, Status> {
    Err(Status::failed_precondition(NOT_SUPPORTED))
}

/// The service: AuthStatus and AuthDisable answer, the calls listed are refused. (The impl
/// is made by a macro so that `async_trait` sees the refused calls' methods written out.)
macro_rules! auth_service {
    ($($method:ident: $req:ident => $resp:ident),* $(,)?) => {
        #[tonic::async_trait]
        impl pb::auth_server::Auth for Auth {
            async fn auth_status(&self, _r: Request<pb::AuthStatusRequest>) -> Result<Response<pb::AuthStatusResponse>, Status> {
                Ok(Response::new(pb::AuthStatusResponse { header: self.0.header_now(), enabled: false, auth_revision: 0 }))
            }

            async fn auth_disable(&self, _r: Request<pb::AuthDisableRequest>) -> Result<Response<pb::AuthDisableResponse>, Status> {
                Ok(Response::new(pb::AuthDisableResponse { header: self.0.header_now() }))
            }

            $(async fn $method(&self, _r: Request<pb::$req>) -> Result<Response<pb::$resp>, Status> {
                refused()
            })*
        }
    };
}

auth_service! {
    auth_enable: AuthEnableRequest => AuthEnableResponse,
    authenticate: AuthenticateRequest => AuthenticateResponse,
    user_add: AuthUserAddRequest => AuthUserAddResponse,
    user_get: AuthUserGetRequest => AuthUserGetResponse,
    user_list: AuthUserListRequest => AuthUserListResponse,
    user_delete: AuthUserDeleteRequest => AuthUserDeleteResponse,
    user_change_password: AuthUserChangePasswordRequest => AuthUserChangePasswordResponse,
    user_grant_role: AuthUserGrantRoleRequest => AuthUserGrantRoleResponse,
    user_revoke_role: AuthUserRevokeRoleRequest => AuthUserRevokeRoleResponse,
    role_add: AuthRoleAddRequest => AuthRoleAddResponse,
    role_get: AuthRoleGetRequest => AuthRoleGetResponse,
    role_list: AuthRoleListRequest => AuthRoleListResponse,
    role_delete: AuthRoleDeleteRequest => AuthRoleDeleteResponse,
    role_grant_permission: AuthRoleGrantPermissionRequest => AuthRoleGrantPermissionResponse,
    role_revoke_permission: AuthRoleRevokePermissionRequest => AuthRoleRevokePermissionResponse,
}
