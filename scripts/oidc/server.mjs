// The OpenID Connect / OAuth 2.0 authorization server the test suite signs in against: the certified
// `oidc-provider` package, on loopback, with its development login pages (any login name and password
// are accepted and become the account id; the account's email is <login>@example.test, verified).
// Started by scripts/storage-servers; configuration comes from the environment:
//   OIDC_PORT             the port on 127.0.0.1
//   OIDC_CLIENT_ID        a confidential client (client_secret_basic)
//   OIDC_CLIENT_SECRET
//   OIDC_ACCESS_TOKEN_TTL seconds an access token lives (refresh tokens rotate on every use)
// Clients are "native" so that any loopback port is accepted in redirect_uri (RFC 8252 §7.3): the
// tests' servers listen on ephemeral ports. PKCE (S256) is required for every authorization request.
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT || 9100);
const issuer = `http://127.0.0.1:${port}`;
const clientId = process.env.OIDC_CLIENT_ID || 'cloudsync-test';
const clientSecret = process.env.OIDC_CLIENT_SECRET || 'cloudsync-test-secret';
const accessTokenTtl = Number(process.env.OIDC_ACCESS_TOKEN_TTL || 3600);

const redirectUris = ['http://127.0.0.1/oauth/callback', 'http://127.0.0.1/auth/oidc/callback'];

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      application_type: 'native',
      redirect_uris: redirectUris,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: `${clientId}-public`,
      application_type: 'native',
      redirect_uris: redirectUris,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    },
  ],
  pkce: { required: () => true },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'files.readwrite'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  findAccount: async (_ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@example.test`, email_verified: true, name: id }),
  }),
  // A refresh token for every client allowed the grant, and a new one on every use.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  ttl: {
    AccessToken: accessTokenTtl,
    AuthorizationCode: 60,
    Grant: 14 * 24 * 3600,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 14 * 24 * 3600,
    Session: 14 * 24 * 3600,
  },
  features: {
    devInteractions: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
  },
  cookies: { keys: ['cloudsync-test-cookie-key'] },
});

// The development pages would log a warning for every request; once at start is enough.
provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
