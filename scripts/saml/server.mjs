// The SAML 2.0 identity provider the test suite signs in against: Auth0's `samlp` package (the
// SAML protocol, signed assertions through `xml-crypto`) behind a small login page, on loopback.
// Any login name is accepted with the one password below and becomes the NameID; the person's
// address is <login>@example.test (an attribute of the assertion).
// Started by scripts/storage-servers; configuration comes from the environment:
//   SAML_PORT      the port on 127.0.0.1
//   SAML_KEY       the PEM file of the key that signs assertions
//   SAML_CERT      the PEM file of its certificate (published in the metadata)
//   SAML_PASSWORD  the password every login name signs in with
// The entity id is http://127.0.0.1:<port>/metadata. Like a "native" OpenID client, a service
// provider may ask for any loopback port, but only the path /auth/saml/acs, in its
// AssertionConsumerServiceURL: the tests' servers listen on ephemeral ports.
import { readFileSync } from 'node:fs';
import express from 'express';
import samlp from 'samlp';

const port = Number(process.env.SAML_PORT || 9101);
const issuer = `http://127.0.0.1:${port}/metadata`;
const key = readFileSync(process.env.SAML_KEY, 'utf8');
const cert = readFileSync(process.env.SAML_CERT, 'utf8');
const password = process.env.SAML_PASSWORD || 'cloudsync-test';

const escape = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const acsAllowed = (url) => {
  try {
    const u = new URL(url);
    return u.protocol === 'http:' && u.hostname === '127.0.0.1' && u.pathname === '/auth/saml/acs' && !u.search;
  } catch {
    return false;
  }
};

const app = express();
app.use(express.urlencoded({ extended: false, limit: '64kb' }));

app.get('/metadata', samlp.metadata({
  issuer,
  cert,
  redirectEndpointPath: '/sso',
  postEndpointPath: '/sso',
  logoutEndpointPaths: {},
}));

// The login page: the request travels on in hidden fields.
const loginPage = (req, res) => {
  const { SAMLRequest, RelayState } = { ...req.query, ...req.body };
  if (!SAMLRequest) return res.status(400).send('no SAMLRequest');
  res.type('html').send(`<!doctype html><title>Test IdP</title>
<form method="post" action="/login">
<input type="hidden" name="SAMLRequest" value="${escape(SAMLRequest)}">
<input type="hidden" name="RelayState" value="${escape(RelayState)}">
<label>Login <input name="login"></label> <label>Password <input name="password" type="password"></label>
<button>Sign in</button></form>`);
};
app.get('/sso', loginPage);
app.post('/sso', loginPage);

app.post('/login', (req, res, next) => {
  const login = String(req.body.login || '');
  if (!/^[a-z0-9][a-z0-9._-]{0,63}$/.test(login) || req.body.password !== password) {
    return res.status(401).type('text').send('wrong login or password');
  }
  samlp.parseRequest(req, (err, request) => {
    if (err || !request) return res.status(400).type('text').send(`bad SAMLRequest: ${err?.message ?? 'missing'}`);
    const acs = request.assertionConsumerServiceURL;
    if (!acsAllowed(acs)) return res.status(400).type('text').send(`AssertionConsumerServiceURL not allowed: ${acs}`);
    samlp.auth({
      issuer,
      cert,
      key,
      destination: acs,
      recipient: acs,
      lifetimeInSeconds: 300,
      getPostURL: (_audience, _dom, _req, cb) => cb(null, acs),
      getUserFromRequest: () => ({
        id: login,
        displayName: login,
        name: { givenName: login, familyName: 'Test' },
        emails: [{ value: `${login}@example.test` }],
      }),
      nameIdentifierFormat: 'urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified',
    })(req, res, next);
  });
});

app.listen(port, '127.0.0.1', () => {
  console.log(`samlp identity provider listening on http://127.0.0.1:${port} (entity ${issuer})`);
});
