//! etcd's Auth service, disabled for good: the status says so, disabling is a no-op, and
//! every call that would enable authentication, log in, or manage users and roles is refused
//! with `FailedPrecondition` and the reason (the etcd API authenticates client certificates).

mod support;

use etcdapi::pb::{self, auth_client::AuthClient};
use support::{channel, server};

#[tokio::test]
async fn authentication_is_disabled_and_stays_so() {
    let s = server().await;
    let mut auth = AuthClient::new(channel(&s.url).await);
    let st = auth.auth_status(pb::AuthStatusRequest {}).await.unwrap().into_inner();
    assert!(!st.enabled);
    assert!(st.header.is_some_and(|h| h.revision >= 0));
    auth.auth_disable(pb::AuthDisableRequest {}).await.unwrap();
    let refusals = [
        auth.auth_enable(pb::AuthEnableRequest {}).await.map(drop),
        auth.authenticate(pb::AuthenticateRequest {}).await.map(drop),
        auth.user_add(pb::AuthUserAddRequest {}).await.map(drop),
        auth.user_list(pb::AuthUserListRequest {}).await.map(drop),
        auth.role_add(pb::AuthRoleAddRequest {}).await.map(drop),
        auth.role_grant_permission(pb::AuthRoleGrantPermissionRequest {}).await.map(drop),
    ];
    for r in refusals {
        let e = r.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("authentication is not enabled") && e.message().contains("client certificates"), "{e:?}");
    }
}
