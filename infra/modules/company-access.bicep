// Roles for one company's identity on that company's own resources, in the company's resource
// group. Each assignment is scoped to the one resource (or container) SOPHIA needs to reach.

@description('Principal id of the company\'s user-assigned identity.')
param principalId string
param openAiAccountName string = ''
param searchServiceName string = ''
param storageAccountName string = ''
param storageContainerName string = ''
param foundryAccountName string = ''
param foundryProjectName string = ''

// Built-in roles (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
// Cognitive Services OpenAI User: chat completions and embeddings, no management rights.
var openAiUser = '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd'
// Search Index Data Contributor: the refresh writes the company's chunks; chat queries them.
var searchIndexDataContributor = '8ebe5a00-799e-43f5-93ac-243d3dce84a7'
// Storage Blob Data Reader on the knowledge container only.
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
// Azure AI User on the Foundry project: run its agents, nothing about the account.
var azureAiUser = '53ca6127-db72-4b80-b1b0-d745d6d5456d'

resource openAi 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = if (!empty(openAiAccountName)) {
  name: openAiAccountName
}

resource openAiRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(openAiAccountName)) {
  name: guid(openAi.id, principalId, openAiUser)
  scope: openAi
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', openAiUser)
  }
}

resource search 'Microsoft.Search/searchServices@2023-11-01' existing = if (!empty(searchServiceName)) {
  name: searchServiceName
}

resource searchRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(searchServiceName)) {
  name: guid(search.id, principalId, searchIndexDataContributor)
  scope: search
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', searchIndexDataContributor)
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = if (!empty(storageAccountName)) {
  name: storageAccountName
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = if (!empty(storageAccountName)) {
  parent: storage
  name: 'default'
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = if (!empty(storageAccountName) && !empty(storageContainerName)) {
  parent: blobs
  name: storageContainerName
}

resource containerRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(storageAccountName) && !empty(storageContainerName)) {
  name: guid(container.id, principalId, storageBlobDataReader)
  scope: container
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
  }
}

resource foundry 'Microsoft.CognitiveServices/accounts@2025-04-01-preview' existing = if (!empty(foundryAccountName)) {
  name: foundryAccountName
}

resource foundryProject 'Microsoft.CognitiveServices/accounts/projects@2025-04-01-preview' existing = if (!empty(foundryAccountName) && !empty(foundryProjectName)) {
  parent: foundry
  name: foundryProjectName
}

resource foundryRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(foundryAccountName) && !empty(foundryProjectName)) {
  name: guid(foundryProject.id, principalId, azureAiUser)
  scope: foundryProject
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', azureAiUser)
  }
}
