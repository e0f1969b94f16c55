// The Flex Consumption (FC1) plan and the Function App running SOPHIA as a custom handler.
// Its deployment package sits in a blob container reached with SOPHIA's identity; every
// connection is identity-based; no app setting holds a key or a secret.

param location string
param tags object = {}
param planName string
param appName string
@description('Resource id of SOPHIA\'s user-assigned identity.')
param sophiaIdentityId string
@description('Client id of SOPHIA\'s user-assigned identity.')
param sophiaClientId string
@description('The companies\' user-assigned identities (company.bicep, output identityJsonEntry: "<resource id>":{}), attached so SOPHIA can use them for those companies\' instances.')
param companyIdentityEntries array = []
param storageAccountName string
param deploymentContainerUrl string
param queueEndpoint string
param refreshQueueName string
param refreshQueueUrl string
param cosmosEndpoint string
param cosmosDatabase string
param keyVaultUri string
@description('Not a credential: the App Insights connection string only lets a process send telemetry.')
param appInsightsConnectionString string
@description('The https base URL clients reach SOPHIA at (SOPHIA_PUBLIC_URL): the APIM gateway when APIM is in front, else https://<appName>.azurewebsites.net.')
param publicUrl string
@description('How many proxies append to X-Forwarded-For before SOPHIA: 1 for the Functions front end, 2 with APIM in front.')
@minValue(1)
@maxValue(8)
param trustedProxyHops int = 1
@description('JWKS of the identity provider that signs admin tokens, e.g. https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys.')
param adminJwksUrl string
@description('Issuer admin tokens must carry, e.g. https://login.microsoftonline.com/<tenant>/v2.0.')
param adminIssuer string
@description('Audience admin tokens must carry (the admin app registration\'s application id URI or client id).')
param adminAudience string
@description('Claim holding the admin role (Entra app roles: roles).')
param adminRoleClaim string = 'roles'
@description('Claim holding the company id of an ADMIN.')
param adminCompanyClaim string = 'companyId'
@description('Hosts companies\' endpoints may use (SOPHIA_UPSTREAM_ALLOWED_HOSTS).')
param upstreamAllowedHosts string = '*.openai.azure.com,*.cognitiveservices.azure.com,*.services.ai.azure.com,*.search.windows.net,*.blob.core.windows.net,*.applicationinsights.azure.com,dc.services.visualstudio.com'
@description('Share of successful requests exported to App Insights (failures are always kept).')
param telemetrySampling string = '1.0'
@description('Default TTL of audit documents in days; must match the Cosmos DB container.')
param auditTtlDays int = 365
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100
@description('The Flex Consumption runtime stack of a custom handler.')
param runtimeName string = 'custom'
param runtimeVersion string = '1.0'

// Every variable SOPHIA reads in Azure mode (README "Configuration"); tests/api/packaging.rs
// checks that these start SOPHIA (Settings::from_lookup) and that each name is one SOPHIA or
// the Functions host reads. One entry per line.
var appSettings = {
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: sophiaClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  SOPHIA_STORE: 'cosmos'
  SOPHIA_COSMOS_ENDPOINT: cosmosEndpoint
  SOPHIA_COSMOS_DATABASE: cosmosDatabase
  SOPHIA_COSMOS_CREATE_CONTAINERS: 'false'
  SOPHIA_AUDIT_TTL_DAYS: string(auditTtlDays)
  SOPHIA_SECRETS: 'keyvault'
  SOPHIA_KEYVAULT_URL: keyVaultUri
  SOPHIA_AZURE_CREDENTIAL: 'managed_identity'
  SOPHIA_AZURE_CLIENT_ID: sophiaClientId
  SOPHIA_REFRESH_QUEUE: 'storage'
  SOPHIA_REFRESH_QUEUE_URL: refreshQueueUrl
  SOPHIA_REFRESH_QUEUE_NAME: refreshQueueName
  SOPHIA_REFRESH_QUEUE_CONNECTION__queueServiceUri: queueEndpoint
  SOPHIA_REFRESH_QUEUE_CONNECTION__credential: 'managedidentity'
  SOPHIA_REFRESH_QUEUE_CONNECTION__clientId: sophiaClientId
  SOPHIA_PUBLIC_URL: publicUrl
  SOPHIA_TRUST_FORWARDED: 'true'
  SOPHIA_TRUSTED_PROXY_HOPS: string(trustedProxyHops)
  SOPHIA_ADMIN_JWKS_URL: adminJwksUrl
  SOPHIA_ADMIN_ISSUER: adminIssuer
  SOPHIA_ADMIN_AUDIENCE: adminAudience
  SOPHIA_ADMIN_ROLE_CLAIM: adminRoleClaim
  SOPHIA_ADMIN_COMPANY_CLAIM: adminCompanyClaim
  SOPHIA_UPSTREAM_ALLOWED_HOSTS: upstreamAllowedHosts
  SOPHIA_TELEMETRY_SAMPLING: telemetrySampling
  SOPHIA_LOG: 'info'
  SOPHIA_LOG_FORMAT: 'json'
  SOPHIA_DATA_DIR: '/tmp/sophia'
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    // checkov:skip=CKV_AZURE_225: Flex Consumption zone redundancy exists only in some regions and is set at plan creation; set zoneRedundant where the region offers it
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: json('{"${sophiaIdentityId}":{}${empty(companyIdentityEntries) ? '' : ','}${join(companyIdentityEntries, ',')}}')
  }
  properties: {
    serverFarmId: plan.id
    // checkov:skip=CKV_AZURE_222: the Function App is the public endpoint when APIM is not deployed; every route authenticates its caller (the token endpoint by access key, with rate limits)
    // checkov:skip=CKV_AZURE_17: client apps authenticate with SOPHIA service tokens and admins with Entra tokens, not TLS client certificates
    // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero by design; set alwaysReady instances for a warm minimum where cold starts matter (SOPHIA starts in milliseconds)
    // checkov:skip=CKV_AZURE_213: App Service health check is not a Flex Consumption setting; the platform probes the host, and /health is SOPHIA's own readiness document
    httpsOnly: true
    clientCertEnabled: false
    // checkov:skip=CKV_AZURE_56: SOPHIA authenticates every request itself (service tokens, admin JWTs from the configured JWKS); App Service authentication in front would refuse its token endpoint
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(appSettings): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: sophiaIdentityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: runtimeName
        version: runtimeVersion
      }
    }
  }
}

// Basic (publishing-credential) auth off for both deployment endpoints: deploy with Entra.
resource scm 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'scm'
  properties: {
    allow: false
  }
}

resource ftp 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'ftp'
  properties: {
    allow: false
  }
}

output name string = app.name
output id string = app.id
output defaultHostName string = app.properties.defaultHostName
output publicUrl string = publicUrl
