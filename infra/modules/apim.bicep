// Optional API Management in front of SOPHIA: the public /admin/* API rewritten to the
// Function App's /manage/* routes, service tokens validated against SOPHIA's own OpenID
// discovery document, admin tokens against the admin identity provider, rate limits per client
// address and per agent instance, and the client address forwarded the way SOPHIA expects
// (SOPHIA_TRUSTED_PROXY_HOPS=2: main.bicep sets it when this module is deployed).

param location string
param tags object = {}
param name string
param publisherEmail string
param publisherName string
@description('A tier with rate-limit-by-key (not Consumption).')
@allowed([
  'Developer'
  'BasicV2'
  'StandardV2'
  'Basic'
  'Standard'
  'Premium'
])
param skuName string = 'BasicV2'
@description('The Function App\'s https base URL (the backend).')
param backendUrl string
@description('SOPHIA_PUBLIC_URL: the gateway\'s own URL, the service tokens\' issuer.')
param publicUrl string
param tokenAudience string = 'sophia-agents'
param adminIssuer string
param adminAudience string
@description('The admin identity provider\'s OpenID discovery document (Entra: <issuer>/.well-known/openid-configuration).')
param adminOpenIdConfigUrl string
@minValue(1)
param callsPerAddressPerMinute int = 600
@minValue(1)
param callsPerInstancePerMinute int = 300

resource service 'Microsoft.ApiManagement/service@2023-05-01-preview' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: skuName
    capacity: 1
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    // checkov:skip=CKV_AZURE_107: the gateway is SOPHIA's public front door for client apps on the internet; a VNet-injected gateway (Premium or StandardV2 with VNet) is a choice of the operator's network, not a default
    // checkov:skip=CKV_AZURE_174: the gateway is the public endpoint by design; what is behind it (the Function App) is what must be protected, and every call is authenticated
    publisherEmail: publisherEmail
    publisherName: publisherName
    customProperties: {
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Protocols.Tls10': 'false'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Protocols.Tls11': 'false'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Backend.Protocols.Tls10': 'false'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Backend.Protocols.Tls11': 'false'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Backend.Protocols.Ssl30': 'false'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Ciphers.TripleDes168': 'false'
    }
  }
}

resource backend 'Microsoft.ApiManagement/service/backends@2023-05-01-preview' = {
  parent: service
  name: 'sophia-functions'
  properties: {
    protocol: 'http'
    url: backendUrl
    tls: {
      validateCertificateChain: true
      validateCertificateName: true
    }
  }
}

resource api 'Microsoft.ApiManagement/service/apis@2023-05-01-preview' = {
  parent: service
  name: 'sophia'
  properties: {
    displayName: 'SOPHIA'
    path: ''
    protocols: [
      'https'
    ]
    serviceUrl: backendUrl
    // SOPHIA authenticates every call itself (service tokens, admin tokens): no APIM keys.
    subscriptionRequired: false
    apiType: 'http'
  }
}

resource apiPolicy 'Microsoft.ApiManagement/service/apis/policies@2023-05-01-preview' = {
  parent: api
  name: 'policy'
  properties: {
    format: 'rawxml'
    value: replace(loadTextContent('apim/api-policy.xml'), '__CALLS_PER_ADDRESS__', string(callsPerAddressPerMinute))
  }
  dependsOn: [
    backend
  ]
}

// The public API (openapi/openapi.yaml): who may call each operation decides its policy.
var operations = [
  { name: 'root', method: 'GET', template: '/', auth: 'public' }
  { name: 'health', method: 'GET', template: '/health', auth: 'public' }
  { name: 'openapi', method: 'GET', template: '/openapi.yaml', auth: 'public' }
  { name: 'jwks', method: 'GET', template: '/.well-known/jwks.json', auth: 'public' }
  { name: 'openid-configuration', method: 'GET', template: '/.well-known/openid-configuration', auth: 'public' }
  { name: 'token', method: 'POST', template: '/agents/auth/token', auth: 'public' }
  { name: 'me', method: 'GET', template: '/agents/me', auth: 'service' }
  { name: 'chat', method: 'POST', template: '/chat', auth: 'service' }
  { name: 'chat-completions', method: 'POST', template: '/v1/chat/completions', auth: 'service' }
  { name: 'models', method: 'GET', template: '/v1/models', auth: 'service' }
  { name: 'model-get', method: 'GET', template: '/v1/models/{model}', auth: 'service' }
  { name: 'embeddings', method: 'POST', template: '/v1/embeddings', auth: 'service' }
  { name: 'responses-create', method: 'POST', template: '/v1/responses', auth: 'service' }
  { name: 'responses-get', method: 'GET', template: '/v1/responses/{id}', auth: 'service' }
  { name: 'config-test', method: 'POST', template: '/config/test', auth: 'service' }
  { name: 'refresh', method: 'POST', template: '/refresh', auth: 'service' }
  { name: 'refresh-status', method: 'GET', template: '/refresh/{jobId}', auth: 'service' }
  { name: 'admin-create-instance', method: 'POST', template: '/admin/agent-instances', auth: 'admin' }
  { name: 'admin-list-instances', method: 'GET', template: '/admin/agent-instances', auth: 'admin' }
  { name: 'admin-get-instance', method: 'GET', template: '/admin/agent-instances/{id}', auth: 'admin' }
  { name: 'admin-patch-instance', method: 'PATCH', template: '/admin/agent-instances/{id}', auth: 'admin' }
  { name: 'admin-delete-instance', method: 'DELETE', template: '/admin/agent-instances/{id}', auth: 'admin' }
  { name: 'admin-rotate-key', method: 'POST', template: '/admin/agent-instances/{id}/rotate-key', auth: 'admin' }
  { name: 'admin-revoke-previous-key', method: 'POST', template: '/admin/agent-instances/{id}/revoke-previous-key', auth: 'admin' }
  { name: 'admin-provision', method: 'POST', template: '/admin/agent-instances/{id}/provision', auth: 'admin' }
  { name: 'admin-config-test', method: 'POST', template: '/admin/agent-instances/{id}/config-test', auth: 'admin' }
  { name: 'admin-audit-logs', method: 'GET', template: '/admin/audit-logs', auth: 'admin' }
  { name: 'admin-usage', method: 'GET', template: '/admin/usage', auth: 'admin' }
]

resource apiOperations 'Microsoft.ApiManagement/service/apis/operations@2023-05-01-preview' = [for op in operations: {
  parent: api
  name: op.name
  properties: {
    displayName: '${op.method} ${op.template}'
    method: op.method
    urlTemplate: op.template
    templateParameters: contains(op.template, '{id}') ? [
      {
        name: 'id'
        type: 'string'
        required: true
      }
    ] : contains(op.template, '{jobId}') ? [
      {
        name: 'jobId'
        type: 'string'
        required: true
      }
    ] : contains(op.template, '{model}') ? [
      {
        name: 'model'
        type: 'string'
        required: true
      }
    ] : []
  }
}]

var servicePolicy = replace(replace(replace(loadTextContent('apim/service-policy.xml'), '__PUBLIC_URL__', publicUrl), '__TOKEN_AUDIENCE__', tokenAudience), '__CALLS_PER_INSTANCE__', string(callsPerInstancePerMinute))
var adminPolicy = replace(replace(replace(loadTextContent('apim/admin-policy.xml'), '__ADMIN_OPENID_CONFIG__', adminOpenIdConfigUrl), '__ADMIN_AUDIENCE__', adminAudience), '__ADMIN_ISSUER__', adminIssuer)

resource operationPolicies 'Microsoft.ApiManagement/service/apis/operations/policies@2023-05-01-preview' = [for (op, i) in operations: if (op.auth != 'public') {
  parent: apiOperations[i]
  name: 'policy'
  properties: {
    format: 'rawxml'
    value: op.auth == 'admin' ? adminPolicy : servicePolicy
  }
}]

output gatewayUrl string = service.properties.gatewayUrl
output name string = service.name
