// A real OpenID provider for tests/test_oidc.py: the certified `oidc-provider` (pinned in package-lock.json)
// on 127.0.0.1, with one confidential client that must use PKCE (S256), the provider's own login and
// consent pages (devInteractions: any password; the account id typed in is the subject) and RP-initiated
// logout. Everything the test decides comes in one JSON argument:
//   {"port": P, "client": {client_id, client_secret, redirect_uris, post_logout_redirect_uris},
//    "accounts": {"<subject>": {claims...}}}
// It prints "listening <issuer>" on stdout once it accepts connections.
import Provider from 'oidc-provider';

const config = JSON.parse(process.argv[2]);
const issuer = `http://127.0.0.1:${config.port}`;

const provider = new Provider(issuer, {
  clients: [{ ...config.client, grant_types: ['authorization_code'], response_types: ['code'],
              token_endpoint_auth_method: 'client_secret_basic' }],
  pkce: { required: () => true },  // every authorization request must carry an S256 code challenge
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    campus: ['campus_role', 'campus_rooms', 'campus_schools'],
  },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  async findAccount(ctx, sub) {
    const claims = config.accounts[sub];
    if (!claims) return undefined;
    return { accountId: sub, async claims() { return { sub, ...claims }; } };
  },
  cookies: { keys: ['campus-test-cookie-key'] },
  ttl: { Session: 600, Interaction: 600, Grant: 600, AccessToken: 600, IdToken: 600, AuthorizationCode: 60 },
});
provider.proxy = false;

const server = provider.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`listening ${issuer}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
