// Onboarding one company: its own user-assigned identity, attached to SOPHIA's Function App
// (main.bicep passes identityId to function-app.bicep), and roles for that identity on that
// company's Azure resources only. A PLATFORM_ADMIN then binds the identity to the company's
// instance (settings.authMode = managedIdentity, settings.managedIdentityClientId = clientId);
// Azure RBAC on the identity is what confines SOPHIA, for that company, to its own resources.
// SOPHIA's own identity never gets a role on a company's resources.

param location string
param tags object = {}
@description('The company id (tenantId in SOPHIA; companyId in its API).')
param companyId string
param identityName string
@description('SOPHIA\'s storage account, for an optional knowledge container hosted by the platform.')
param platformStorageAccountName string
@description('Create a knowledge container for this company in SOPHIA\'s storage account (readable by this company\'s identity only).')
param createKnowledgeContainer bool = false
@description('Name of that container (3-63 lowercase letters, digits and hyphens).')
param knowledgeContainerName string = 'knowledge-${take(toLower(uniqueString(companyId)), 13)}'
@description('Where the company\'s own resources live: {subscriptionId, resourceGroup}. Empty: none outside SOPHIA\'s resource group.')
param companyScope object = {}
@description('The company\'s Azure OpenAI / AI Services account name (in companyScope); empty for none.')
param openAiAccountName string = ''
@description('The company\'s AI Search service name (in companyScope); empty for none.')
param searchServiceName string = ''
@description('The company\'s storage account and container holding its knowledge (in companyScope); empty for none.')
param knowledgeStorageAccountName string = ''
param knowledgeStorageContainerName string = ''
@description('The company\'s Azure AI Foundry account and project (in companyScope); empty for none.')
param foundryAccountName string = ''
param foundryProjectName string = ''

var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
  tags: union(tags, {
    'sophia-company': companyId
  })
}

resource platformStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: platformStorageAccountName
}

resource platformBlobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: platformStorage
  name: 'default'
}

resource knowledgeContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = if (createKnowledgeContainer) {
  parent: platformBlobs
  name: knowledgeContainerName
  properties: {
    publicAccess: 'None'
    metadata: {
      sophiacompany: companyId
    }
  }
}

// Read access to that one container: not to the account, not to another company's container.
resource knowledgeReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (createKnowledgeContainer) {
  name: guid(platformStorage.id, knowledgeContainerName, identity.id, storageBlobDataReader)
  scope: knowledgeContainer
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
  }
}

var hasCompanyResources = !empty(companyScope) && (!empty(openAiAccountName) || !empty(searchServiceName) || !empty(knowledgeStorageAccountName) || !empty(foundryAccountName))

module access 'company-access.bicep' = if (hasCompanyResources) {
  name: 'sophia-access-${take(uniqueString(companyId), 8)}'
  scope: resourceGroup(companyScope.?subscriptionId ?? subscription().subscriptionId, companyScope.?resourceGroup ?? resourceGroup().name)
  params: {
    principalId: identity.properties.principalId
    openAiAccountName: openAiAccountName
    searchServiceName: searchServiceName
    storageAccountName: knowledgeStorageAccountName
    storageContainerName: knowledgeStorageContainerName
    foundryAccountName: foundryAccountName
    foundryProjectName: foundryProjectName
  }
}

output companyId string = companyId
output identityId string = identity.id
@description('This identity as an entry of a userAssignedIdentities object, for function-app.bicep.')
output identityJsonEntry string = '"${identity.id}":{}'
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
output knowledgeContainerUrl string = createKnowledgeContainer ? '${platformStorage.properties.primaryEndpoints.blob}${knowledgeContainerName}' : ''
@description('The admin PATCH body a PLATFORM_ADMIN sends to bind this identity to the company\'s instance.')
output bindPatch object = {
  settings: {
    authMode: 'managedIdentity'
    managedIdentityClientId: identity.properties.clientId
  }
}
