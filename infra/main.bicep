// SOPHIA on Azure: one resource group with SOPHIA's identity, a Flex Consumption Function App
// (custom handler), Cosmos DB (serverless, Entra-only), Key Vault (RBAC), Storage (identity
// only), Application Insights with its workspace and workbook, optionally API Management, and
// one identity per onboarded company with roles on that company's resources only.
// No secret is a parameter, a variable or an output: SOPHIA writes every secret itself.
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json
//   azd up            (azure.yaml: the same template, then scripts/package.sh and the zip deploy)

targetScope = 'resourceGroup'

@minLength(1)
@maxLength(40)
@description('Name of the environment (azd: AZURE_ENV_NAME); part of every resource name.')
param environmentName string

@description('Region of every resource (one that offers Flex Consumption).')
param location string = resourceGroup().location

@description('JWKS of the identity provider that signs admin tokens, e.g. https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys.')
param adminJwksUrl string

@description('Issuer of admin tokens, e.g. https://login.microsoftonline.com/<tenant>/v2.0.')
param adminIssuer string

@description('Audience of admin tokens: the admin app registration\'s application id URI or client id.')
param adminAudience string

@description('Claim holding the admin role (ADMIN | PLATFORM_ADMIN); Entra app roles arrive in roles.')
param adminRoleClaim string = 'roles'

@description('Claim holding the company id of an ADMIN.')
param adminCompanyClaim string = 'companyId'

@description('Share of successful requests exported to App Insights, 0.0 to 1.0 (failures are always kept).')
param telemetrySampling string = '1.0'

@description('Days audit documents are kept (0: forever).')
@minValue(0)
param auditTtlDays int = 365

@description('Put API Management in front (the public /admin/* API, JWT validation, rate limits).')
param deployApim bool = false
param apimPublisherEmail string = ''
param apimPublisherName string = 'SOPHIA operators'
param apimSku string = 'BasicV2'

@description('Companies to onboard: [{companyId, createKnowledgeContainer?, companyScope?: {subscriptionId, resourceGroup}, openAiAccountName?, searchServiceName?, knowledgeStorageAccountName?, knowledgeStorageContainerName?, foundryAccountName?, foundryProjectName?}].')
param companies array = []

param tags object = {}

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var allTags = union(tags, {
  'azd-env-name': environmentName
  application: 'sophia'
})
var appName = 'func-sophia-${resourceToken}'
var apimName = 'apim-sophia-${resourceToken}'
// With APIM in front, clients (and the token issuer) use the gateway's URL.
var publicUrl = deployApim ? 'https://${apimName}.azure-api.net' : 'https://${appName}.azurewebsites.net'
var adminOpenIdConfigUrl = '${adminIssuer}/.well-known/openid-configuration'

module identity 'modules/identity.bicep' = {
  name: 'sophia-identity'
  params: {
    name: 'id-sophia-${resourceToken}'
    location: location
    tags: allTags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'sophia-monitoring'
  params: {
    location: location
    tags: allTags
    workspaceName: 'log-sophia-${resourceToken}'
    appInsightsName: 'appi-sophia-${resourceToken}'
  }
}

module storage 'modules/storage.bicep' = {
  name: 'sophia-storage'
  params: {
    location: location
    tags: allTags
    name: 'stsophia${take(resourceToken, 15)}'
    sophiaPrincipalId: identity.outputs.principalId
  }
}

module cosmos 'modules/cosmos.bicep' = {
  name: 'sophia-cosmos'
  params: {
    location: location
    tags: allTags
    accountName: 'cosmos-sophia-${resourceToken}'
    sophiaPrincipalId: identity.outputs.principalId
    auditTtlDays: auditTtlDays
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'sophia-keyvault'
  params: {
    location: location
    tags: allTags
    name: 'kv-sophia-${take(resourceToken, 12)}'
    sophiaPrincipalId: identity.outputs.principalId
  }
}

module company 'modules/company.bicep' = [for c in companies: {
  name: 'sophia-company-${take(uniqueString(c.companyId), 8)}'
  params: {
    location: location
    tags: allTags
    companyId: c.companyId
    identityName: 'id-sophia-co-${take(uniqueString(resourceToken, c.companyId), 10)}'
    platformStorageAccountName: storage.outputs.name
    createKnowledgeContainer: c.?createKnowledgeContainer ?? false
    companyScope: c.?companyScope ?? {}
    openAiAccountName: c.?openAiAccountName ?? ''
    searchServiceName: c.?searchServiceName ?? ''
    knowledgeStorageAccountName: c.?knowledgeStorageAccountName ?? ''
    knowledgeStorageContainerName: c.?knowledgeStorageContainerName ?? ''
    foundryAccountName: c.?foundryAccountName ?? ''
    foundryProjectName: c.?foundryProjectName ?? ''
  }
}]

module functionApp 'modules/function-app.bicep' = {
  name: 'sophia-function-app'
  params: {
    location: location
    tags: union(allTags, {
      'azd-service-name': 'sophia'
    })
    planName: 'plan-sophia-${resourceToken}'
    appName: appName
    sophiaIdentityId: identity.outputs.id
    sophiaClientId: identity.outputs.clientId
    companyIdentityEntries: [for (c, i) in companies: company[i].outputs.identityJsonEntry]
    storageAccountName: storage.outputs.name
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    queueEndpoint: storage.outputs.queueEndpoint
    refreshQueueName: storage.outputs.refreshQueueName
    refreshQueueUrl: storage.outputs.refreshQueueUrl
    cosmosEndpoint: cosmos.outputs.endpoint
    cosmosDatabase: cosmos.outputs.databaseName
    keyVaultUri: keyVault.outputs.uri
    appInsightsConnectionString: monitoring.outputs.connectionString
    publicUrl: publicUrl
    trustedProxyHops: deployApim ? 2 : 1
    adminJwksUrl: adminJwksUrl
    adminIssuer: adminIssuer
    adminAudience: adminAudience
    adminRoleClaim: adminRoleClaim
    adminCompanyClaim: adminCompanyClaim
    telemetrySampling: telemetrySampling
    auditTtlDays: auditTtlDays
  }
}

module apim 'modules/apim.bicep' = if (deployApim) {
  name: 'sophia-apim'
  params: {
    location: location
    tags: allTags
    name: apimName
    publisherEmail: apimPublisherEmail
    publisherName: apimPublisherName
    skuName: apimSku
    backendUrl: 'https://${functionApp.outputs.defaultHostName}'
    publicUrl: publicUrl
    adminIssuer: adminIssuer
    adminAudience: adminAudience
    adminOpenIdConfigUrl: adminOpenIdConfigUrl
  }
}

output AZURE_LOCATION string = location
output SOPHIA_FUNCTION_APP string = functionApp.outputs.name
output SOPHIA_PUBLIC_URL string = publicUrl
output SOPHIA_FUNCTION_URL string = 'https://${functionApp.outputs.defaultHostName}'
output SOPHIA_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output SOPHIA_KEYVAULT_URL string = keyVault.outputs.uri
output SOPHIA_COSMOS_ENDPOINT string = cosmos.outputs.endpoint
output SOPHIA_STORAGE_ACCOUNT string = storage.outputs.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.appInsightsName
@description('Per company: its identity\'s client id and the PATCH body that binds it to the company\'s instance.')
output COMPANIES array = [for (c, i) in companies: {
  companyId: c.companyId
  clientId: company[i].outputs.clientId
  knowledgeContainerUrl: company[i].outputs.knowledgeContainerUrl
  bindPatch: company[i].outputs.bindPatch
}]
